"""The cells of the notebooks, one module per notebook; each notebook imports its module as
``ek`` and calls one function per cell:

=====================  ===========================================  ==================
notebook               module                                       kernel
=====================  ===========================================  ==================
``01_quantize``        :mod:`evalkit.ui.cells.quantize`             evalkit-quantize
``02_accuracy``,       :mod:`evalkit.ui.cells.evaluate`             evalkit-eval
``03_latency``
``04_report``          :mod:`evalkit.ui.cells.report`               evalkit-eval
``05_summary``         :mod:`evalkit.ui.cells.summary`              evalkit-eval
=====================  ===========================================  ==================

:mod:`evalkit.ui.cells.stage` holds what every stage notebook shares (the run it writes
into, the stage check). The quantize kernel has llm-compressor but not the eval packages
(scipy, vLLM), so ``quantize`` imports nothing of the eval side.
"""
