"""The `e3fast` command line: one subcommand per public function.

The CLI only parses: each subcommand is an options dataclass (parsed with
argparse-dataclass) and the API function that does the work. User mistakes
(`E3Error`) print one line on stderr and exit 2; Ctrl-C exits 130; no tracebacks
for either.
"""
import contextlib
import importlib
import os
import signal
import sys
import threading

from argparse_dataclass import ArgumentParser

from . import __version__
from . import interrupts
from .errors import E3Error

#: name -> (module, options dataclass, function, one-line help). Imported lazily so that
#: `e3fast --help` stays fast.
COMMANDS = {
    "priors": ("e3fast.priors.cli", "PriorsOptions", "run_priors",
               "print the device x model service-time priors (MLPerf provenance)"),
    "gen-trace": ("e3fast.tracefile.generator", "GenTraceOptions", "run_gen_trace",
                  "generate a synthetic scenario trace (HDF5)"),
    "import-trace": ("e3fast.tracefile.importers", "ImportTraceOptions", "run_import_trace",
                     "import a public LLM trace (azure, burstgpt CSV; mooncake JSON lines) into a trace file"),
    "inspect": ("e3fast.tracefile.inspect", "InspectOptions", "run_inspect",
                "summarise a trace file (schema, scenario, fleet, model mix, rates)"),
    "replay": ("e3fast.runner", "ReplayOptions", "run_replay",
               "replay a trace through a routing policy and write metrics"),
    "mc": ("e3fast.montecarlo", "McOptions", "run_mc",
           "Monte-Carlo replications: every policy on the same traces, paired 95% CIs"),
    "llm-eval": ("e3fast.llmeval", "LlmEvalOptions", "run_llm_eval",
                 "the LLM controller against the rule controller on the same traces (paired)"),
    "gen-corpus": ("e3fast.corpus", "CorpusOptions", "run_gen_corpus",
                   "generate many traces from one TOML spec, with a manifest (incremental)"),
    "report": ("e3fast.report", "ReportOptions", "run_report",
               "tables and paper figures (PNG, PDF) from replay or mc output folders"),
    "demo": ("e3fast.demo", "DemoOptions", "run_demo",
             "the main job on embedded defaults: E3 versus baselines on the sample trace"),
}


def _usage() -> str:
    width = max(len(n) for n in COMMANDS)
    lines = [f"usage: e3fast COMMAND [options]   (e3fast {__version__})", "", "commands:"]
    lines += [f"  {name:<{width}}  {spec[3]}" for name, spec in COMMANDS.items()]
    lines += ["", "`e3fast COMMAND --help` shows the options of a command."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `e3fast` console script; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    if argv[0] == "--version":
        print(__version__)
        return 0
    name = argv[0]
    if name not in COMMANDS:
        print(f"e3fast: error: unknown command {name!r} (fix: choose one of "
              f"{', '.join(COMMANDS)})", file=sys.stderr)
        return 2
    module_name, options_name, func_name, help_text = COMMANDS[name]
    with _signals_as_interrupts(name) as late:
        try:
            module = importlib.import_module(module_name)
            parser = ArgumentParser(getattr(module, options_name), prog=f"e3fast {name}",
                                    description=help_text)
            options = parser.parse_args(argv[1:])
            result = getattr(module, func_name)(options)
        except E3Error as exc:
            print(f"e3fast {name}: error: {exc}", file=sys.stderr)
            _STATE["hdf5_broken"] = exc.hdf5_broken
            return exc.exit_code
        except KeyboardInterrupt:
            print(f"e3fast {name}: interrupted; finished outputs are intact, nothing "
                  "half-written was left", file=sys.stderr)
            return 130
        except BrokenPipeError:  # stdout closed early (`| head`): stop quietly
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 141
    if late:  # the signal came after the last safe point: the outputs are complete
        print(f"e3fast {name}: interrupted after the command finished", file=sys.stderr)
        return 130
    return int(result or 0)


@contextlib.contextmanager
def _signals_as_interrupts(name: str):
    """Ctrl-C (SIGINT) and SIGTERM (kill, a batch scheduler) both interrupt the command the
    same way (`interrupts`: KeyboardInterrupt at a safe point), even where SIGINT was
    inherited as ignored (a background job). Only in the main thread; previous handlers are
    restored. Yields a list that holds, afterwards, a signal received but not acted on."""
    late = []
    if threading.current_thread() is not threading.main_thread():
        yield late
        return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    for sig in previous:
        signal.signal(sig, interrupts.handler)
    interrupts.start(name)
    try:
        yield late
    finally:
        if interrupts.stop() is not None:
            late.append(True)
        for sig, handler in previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)


_STATE = {"hdf5_broken": False}


def entry() -> None:
    """The console script: exit with `main()`'s code. Outside `main()` a signal is only
    recorded, and ignored once the interpreter shuts down (which would otherwise restore the
    default action: death by the signal instead of exit code 0 or 130). After a failed HDF5
    write the HDF5 library would crash while shutting down (see errors.E3Error.hdf5_broken),
    so the process then ends at once, after flushing its output."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, interrupts.handler)
    try:
        code = main()
    except KeyboardInterrupt:  # as the command was starting, before main() could catch it
        print("e3fast: interrupted", file=sys.stderr)
        code = 130
    for sig in (signal.SIGINT, signal.SIGTERM):  # Python's shutdown (milliseconds) is not
        signal.signal(sig, signal.SIG_IGN)       # cut: it resets handlers to the default
    if interrupts.stop() is not None and code == 0:  # between main() and here
        code = 130
    if _STATE["hdf5_broken"]:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    entry()
