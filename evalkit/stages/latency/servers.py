"""Server mode: one vLLM server per variant (:class:`evalkit.stages.serving.VariantSession`),
started side by side in groups, each measured alone over its points, restarted once after a
crash; its start and provenance recorded."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from evalkit import engine as eng
from evalkit.core import records as rec
from evalkit.core.environment import environment_info
from evalkit.core.errors import EngineError, UnsupportedSchemeError
from evalkit.core.io import atomic_write_json
from evalkit.core.specs import Variant
from evalkit.stages.latency.derive import PointData
from evalkit.stages.latency.points import Point
from evalkit.stages.latency.rates import RateSweep
from evalkit.stages.latency.raw import STAGE
from evalkit.stages.latency.rows import startup_records, vocab_size
from evalkit.stages.latency.sweep import LatencyStage
from evalkit.stages.latency.trials import measure_point
from evalkit.stages.serving import VariantSession, kernel_words, warn_kernel_substitution


class ServerSweep:
    """Server mode of one latency stage run (its records and failures go to ``st``)."""

    def __init__(self, st: LatencyStage) -> None:
        self.st, self.run = st, st.run

    def run_group(self, group: Sequence[tuple[Variant, Path]], bar: Any) -> None:
        """Server mode for a group of variants: their servers start side by side
        (``engine.parallel_starts``), then each is measured alone while the others wait idle
        (a waiting vLLM server does no work: its engine blocks on an empty request queue)."""
        opened: list[tuple[VariantSession, list[Point]]] = []
        try:
            for v, ckpt in group:
                o = self.launch(v, ckpt, bar)
                if o is not None:
                    opened.append(o)
            ready = [(s, todo) for s, todo in opened if self.wait(s, todo, bar)]
            if len(opened) > 1:
                self.run.log("latency: servers of " + ", ".join(s.name for s, _ in opened)
                             + " started side by side; each is measured alone")
            for session, todo in ready:
                session.beside = [s.name for s, _ in opened if s is not session]
                with session:
                    self.measure(session, todo, bar)
        finally:
            for s, _ in opened:
                s.stop()

    def launch(self, v: Variant, ckpt: Path, bar: Any
               ) -> tuple[VariantSession, list[Point]] | None:
        """Start ``v``'s server process unless nothing needs it; (session, points to measure)."""
        st = self.st
        todo = st.todo(v, "server", bar)
        startup_file = st.raw / v.name / "startup.parquet"
        sweep = RateSweep(st)
        if not todo and not sweep.pending(v):
            sweep.reuse_done(v, bar)
            if startup_file.is_file():
                st.frames.append(rec.read_records(startup_file))
            return None
        known = eng.engine_verdict(self.run, v.name)
        if known is not None:
            # another stage of this run already asked the engine; asking again costs a start
            self.run.log(f"latency: {v.name} {known['status']} here (engine said so in stage "
                         f"{known['stage']}): {known['reason']}")
            kind = "unsupported" if known["status"] == "unsupported" else "failed"
            st.status_rows(v, "server", kind, known["reason"])
            sweep.status(v, kind, known["reason"])
            bar.update(len(todo) + self.rate_total())
            return None
        tokenizer = st.tokenizer_for(ckpt)
        session = VariantSession.open(
            st.cfg, self.run, v, ckpt, log_name=f"vllm-server-{v.name}.log",
            tokenizer=None if tokenizer == ckpt else tokenizer,
            load_format=getattr(st.model, "load_format", None))
        self.run.log(f"latency: starting vLLM server for {v.name} ({ckpt})")
        try:
            session.launch()
        except EngineError as exc:
            self.start_failed(v, exc, todo, bar)
            return None
        return session, todo

    def wait(self, session: VariantSession, todo: list[Point], bar: Any) -> bool:
        """Wait for a launched server; False (and the variant's records) when it cannot serve."""
        try:
            session.wait()
        except EngineError as exc:
            self.start_failed(session.variant, exc, todo, bar)
            return False
        return True

    def start_failed(self, v: Variant, exc: EngineError, todo: list[Point], bar: Any) -> None:
        if isinstance(exc, UnsupportedSchemeError):
            self.run.log(f"latency: {v.name} unsupported here: {exc.reason}")
            eng.record_engine_verdict(self.run, v.name, "unsupported", exc.reason, STAGE)
            self.st.status_rows(v, "server", "unsupported", exc.reason)
        else:
            first = str(exc).splitlines()[0]
            self.run.log(f"latency: {v.name} server failed: {first}")
            self.st.status_rows(v, "server", "failed", str(exc), first)
        RateSweep(self.st).status(v, "unsupported" if isinstance(exc, UnsupportedSchemeError)
                                  else "failed", str(exc).splitlines()[0])
        bar.update(len(todo) + self.rate_total())

    def rate_total(self) -> int:
        """Rate points all of one variant's sweeps plan (for progress bars)."""
        return RateSweep(self.st).total()

    def measure(self, session: VariantSession, todo: list[Point], bar: Any) -> None:
        """Run the server-mode points ``todo`` of the session's variant on its running server
        (``session.beside``: variants whose servers are up and idle meanwhile)."""
        st, v = self.st, session.variant
        vdir = st.raw / v.name
        tokenizer = st.tokenizer_for(session.checkpoint)
        prov = self.write_provenance(session)
        self.run.log(f"latency: {v.name} server up in {session.startup_s:.1f} s "
                     f"({kernel_words(prov)})")
        warn_kernel_substitution(self.run, "latency", v, prov.get("linear_kernels"))
        startup = startup_records(session.startup_s, prov, session.beside, st.common(v))
        rec.write_records(startup, vdir / "startup.parquet")
        st.frames.append(startup)
        vocab = vocab_size(session.checkpoint)
        restarted = False
        for i, p in enumerate(todo):
            try:
                self.server_point(session, tokenizer, vdir, p, vocab)
            except EngineError as exc:
                rest = todo[i + 1:]
                stop = self._failed_point(session, p, exc, rest, restarted)
                if stop is None:
                    restarted = True
                elif stop:
                    bar.update(stop + self.rate_total())
                    return
            bar.update(1)
        if st.lat.traffic is None:
            return

        def rate_point(p: Point) -> PointData | None:
            if not session.alive():
                st.point_failed(v, p, "not measured: the vLLM server is not running")
                return None
            try:
                return self.server_point(session, tokenizer, vdir, p, vocab)
            except EngineError as exc:
                self._failed_point(session, p, exc, [], True)
                return None

        RateSweep(st).run_all(v, rate_point, bar)

    def _failed_point(self, session: VariantSession, p: Point, exc: EngineError,
                      rest: list[Point], restarted: bool) -> int | None:
        """Record a point that failed; what the sweep does next: 0 go on, None go on after a
        restart, a count: stop (that many points accounted for)."""
        st, v = self.st, session.variant
        key = p.key(v.name).encode()
        died = not session.alive()
        why = str(exc)
        if died and not why.startswith("vLLM server died"):
            why = f"vLLM server died during this point ({session.exit_description()}): {why}"
        first = why.splitlines()[0]
        self.run.log(f"latency: {key} failed: {first}")
        st.fail(p.key(v.name), "failed", first)
        st.point_failed(v, p, why)
        if "timed out" in first and not died:
            # A server that could not answer one point in time will not answer the next ones
            # sooner: no second multi-minute wait.
            for p2 in rest:
                st.point_failed(v, p2, f"not measured: {key} timed out ({first}); the sweep "
                                       f"of {v.name} stopped there")
            self.run.log(f"latency: {v.name}: {len(rest)} remaining point(s) not measured "
                         f"after the time-out at {key}")
            return len(rest) + 1
        if died:
            # One restart per variant: a crash mid-sweep costs that point, not the rest of
            # the sweep; a server that dies again is not restarted.
            if rest and not restarted and self.restart(session, key):
                return None
            for p2 in rest:
                st.point_failed(v, p2, f"not measured: the vLLM server died at {key} and was "
                                       "not restarted")
            return 1 + len(rest)
        return 0

    def restart(self, session: VariantSession, key: str) -> bool:
        """Stop what is left of a dead server's process group and start it again."""
        name = session.name
        self.run.log(f"latency: vLLM server for {name} died at {key} "
                     f"({session.exit_description()}); restarting it once for the other points")
        try:
            session.restart()
        except EngineError as exc:
            self.run.log(f"latency: restart of {name} failed: {str(exc).splitlines()[0]}")
            return False
        self.run.log(f"latency: {name} server up again in {session.startup_s:.1f} s")
        return True

    def server_point(self, session: VariantSession, tokenizer: Path, vdir: Path, p: Point,
                     vocab: int) -> PointData:
        """One server point (:func:`evalkit.stages.latency.trials.measure_point`)."""
        return measure_point(self.st, session, tokenizer, vdir, p, vocab)

    def write_provenance(self, session: VariantSession) -> dict[str, Any]:
        st, v, server = self.st, session.variant, session.server
        prov: dict[str, Any] = eng.provenance(session.log_text())
        env = environment_info()
        info = {
            "variant": v.name, "scheme": v.scheme, "method": v.method,
            "engine": st.cfg.engine.model_dump(mode="json"),
            "device": st.hardware, "server_command": server.command(server.port or 0),
            "startup_s": session.startup_s,
            "log": str(session.log_path.relative_to(self.run.path)),
            "engine_log": prov,
            "packages": env.get("packages"), "python": env.get("python"),
            "platform": env.get("platform"),
        }
        atomic_write_json(st.raw / v.name / "provenance.json", info)
        return prov
