"""Launching the runs of a comparison: in this process, or as ``classp-hf run`` subprocesses.

A :class:`Launcher` takes a :class:`RunJob` (one run: its config, folder, log and whether it starts, resumes or
starts afresh) and returns an :class:`Attempt` (finished or not, the error line, wall and CPU time). A failure
of one run is an attempt's error, never an exception; ``KeyboardInterrupt`` ends the comparison (the runs
resume when it is run again).
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

from classp_hf.continual.compare.grid import GridPoint
from classp_hf.continual.config import RunConfig

__all__ = ["RunJob", "Attempt", "Launcher", "InProcessLauncher", "SubprocessLauncher", "available_cores", "error_line"]


@dataclass(frozen=True)
class RunJob:
    """One run of a comparison, ready to launch.

    Args:
        setting, point, seed: which run.
        config: its validated config.
        run_dir: its run folder.
        config_path: where its resolved config is written (what a subprocess reads).
        log_path: its output.
        mode: ``start`` (new folder), ``resume`` (a killed run) or ``overwrite`` (a folder without a run state).
        cache_dir: the comparison's cache folder shared by its runs (``classp-hf run --cache-dir``), or `None`.
    """

    setting: str
    point: GridPoint
    seed: int
    config: RunConfig
    run_dir: Path
    config_path: Path
    log_path: Path
    mode: Literal["start", "resume", "overwrite"]
    cache_dir: Path | None = None

    @property
    def title(self) -> str:
        at = "" if self.point.name == "default" else f" {self.point.label}"
        return f"{self.setting}{at} seed {self.seed}"


@dataclass(frozen=True)
class Attempt:
    """What one launch of a run gave.

    Args:
        ok: the run finished.
        error: its error line when it did not.
        wall_seconds, cpu_seconds: elapsed and CPU (user + system) time of the attempt.
        returncode: the subprocess's exit code (`None` in process).
    """

    ok: bool
    error: str | None
    wall_seconds: float
    cpu_seconds: float
    returncode: int | None = None


class Launcher(Protocol):
    """Runs one :class:`RunJob` to its end (or failure) and says how it went."""

    def launch(self, job: RunJob) -> Attempt: ...


def _first_line(text: str) -> str:
    lines = [line.strip() for line in str(text).strip().splitlines() if line.strip()]
    return lines[0] if lines else ""


def error_line(error: BaseException) -> str:
    """One line for an exception: a ``ValueError``'s message (bad input), else ``Type: message``."""
    line = _first_line(str(error))
    if isinstance(error, ValueError) and line:
        return line
    return f"{type(error).__name__}: {line}" if line else type(error).__name__


class InProcessLauncher:
    """Runs each job in this process (:func:`classp_hf.continual.runner.run_continual`), one at a time.

    The run's progress lines go to the job's log file; the libraries' own output is held back (their loggers
    write to the console they started with, not to the log: see :mod:`.console`). An exception is the attempt's
    error (a traceback in the log), except ``KeyboardInterrupt``, which ends the comparison.
    """

    def launch(self, job: RunJob) -> Attempt:
        from classp_hf.continual.runner import run_continual

        started, cpu_before = time.perf_counter(), _self_cpu_seconds()
        error = None
        job.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(job.log_path, "a", encoding="utf-8") as log:
            try:
                with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
                    run_continual(
                        job.config,
                        job.run_dir,
                        overwrite=job.mode == "overwrite",
                        resume=job.mode == "resume",
                        log=True,
                        verbose=False,
                        cache_dir=job.cache_dir,
                    )
            except Exception as caught:  # any failure of one run is recorded, the comparison goes on
                error = error_line(caught)
                log.write(traceback.format_exc())
        return Attempt(error is None, error, time.perf_counter() - started, _self_cpu_seconds() - cpu_before)


def _self_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def available_cores() -> int:
    """CPU cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _package_root() -> str:
    import classp_hf

    return str(Path(classp_hf.__file__).resolve().parent.parent)


class SubprocessLauncher:
    """Runs each job as ``python -m classp_hf.cli run CONFIG --output-dir RUN --verbose``, all its output (the
    libraries' too) to its log file.

    Args:
        threads: ``OMP_NUM_THREADS`` of each run, unless the environment sets it.

    CPU time is the child's own (``os.wait4``); the child imports the same ``classp_hf`` as this process.
    """

    def __init__(self, threads: int) -> None:
        self.threads = threads
        self._live: dict[int, subprocess.Popen] = {}
        self._lock = threading.Lock()

    def _environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env.setdefault("OMP_NUM_THREADS", str(self.threads))
        env.setdefault("TOKENIZERS_PARALLELISM", "false")
        env["TQDM_DISABLE"] = "1"
        env["PYTHONPATH"] = os.pathsep.join(p for p in (_package_root(), env.get("PYTHONPATH")) if p)
        return env

    def command(self, job: RunJob) -> list[str]:
        """The command line of ``job``."""
        command = [sys.executable, "-m", "classp_hf.cli", "run", str(job.config_path), "--output-dir", str(job.run_dir)]
        command.append("--verbose")  # the log is a file: everything the libraries print helps explain a failure
        if job.cache_dir is not None:
            command += ["--cache-dir", str(job.cache_dir)]
        if job.mode == "resume":
            command.append("--resume")
        elif job.mode == "overwrite":
            command.append("--overwrite")
        return command

    def launch(self, job: RunJob) -> Attempt:
        job.log_path.parent.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        with open(job.log_path, "ab") as log:
            process = subprocess.Popen(
                self.command(job), stdout=log, stderr=subprocess.STDOUT, env=self._environment(), cwd=os.getcwd()
            )
            with self._lock:
                self._live[process.pid] = process
            try:
                _, status, usage = os.wait4(process.pid, 0)
            except BaseException:  # Ctrl-C: end the run (it resumes later) before going on
                with contextlib.suppress(ProcessLookupError):
                    process.terminate()
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(process.pid, 0)
                process.returncode = -signal.SIGTERM
                raise
            finally:
                with self._lock:
                    self._live.pop(process.pid, None)
        process.returncode = os.waitstatus_to_exitcode(status)
        wall, cpu = time.perf_counter() - started, usage.ru_utime + usage.ru_stime
        if process.returncode == 0:
            return Attempt(True, None, wall, cpu, 0)
        return Attempt(False, _log_error(job.log_path, process.returncode), wall, cpu, process.returncode)

    def stop_all(self) -> None:
        """Sends SIGTERM to every run still going (after Ctrl-C; a run resumes later)."""
        with self._lock:
            processes = list(self._live.values())
        for process in processes:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)


def _log_error(log_path: Path, returncode: int) -> str:
    """The error line of a failed subprocess: its ``classp-hf: error:`` line, else its last line."""
    if returncode < 0:
        return f"killed by signal {signal.Signals(-returncode).name}"
    try:
        with open(log_path, "rb") as log:
            log.seek(max(0, log_path.stat().st_size - 65536))
            lines = [line.strip() for line in log.read().decode("utf-8", "replace").splitlines() if line.strip()]
    except OSError:
        lines = []
    for line in reversed(lines):
        if line.startswith("classp-hf: error:"):
            return line[len("classp-hf: error:") :].strip()
    if returncode == 130:
        return "interrupted"
    return lines[-1] if lines else f"exit code {returncode}"
