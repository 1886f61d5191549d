"""The core every stage shares: errors, atomic I/O, the study schema, quantization schemes,
tidy records, run directories, machine probing and the offline switches."""
