"""Fuzz the request parser for a bounded time: ``python -m loadtests.fuzz_parser --seconds 300``.

Each input is a byte stream a client could send. It is parsed whole, then again cut into
pieces (chosen from the input's hash, so a finding replays exactly) and, when short, one octet
at a time, and the parser must:

- raise nothing but its own ProtocolError ("crash");
- give the same requests, bodies and error whatever the pieces ("split");
- read its own canonical re-serialisation of every request it accepted the same way
  ("round-trip");
- never accept a request h11 refuses or reads differently, bar the RFC-permitted differences
  listed in tests/test_h11_differential.py ("lenient"; with default limits only);
- spend under --slow seconds of CPU on one input ("slow").

("harness": the comparison with h11 itself failed on the input; look at it by hand.)

The engine is atheris (coverage-guided libFuzzer; ``pip install atheris``) when it imports,
else hypothesis drawing generated and mutated requests. One process, one core. Every input
that breaks a rule is saved under --out; the run prints executions and findings as it goes and
exits 1 when anything was found, 0 when not, 2 on bad usage. ``--replay FILE...`` runs the
checks on saved inputs again.
"""

import argparse
import hashlib
import importlib
import os
import random
import shutil
import sys
import tempfile
import time
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.join(ROOT, "tests")

# Tokens libFuzzer splices into inputs (its -dict file format).
DICTIONARY = [
    "\r\n", "\r\n\r\n", " HTTP/1.1\r\n", " HTTP/1.0\r\n", "GET ", "POST ", "OPTIONS * ",
    "CONNECT ", "http://", "Host: ", "Content-Length: ", "Transfer-Encoding: ", "chunked",
    "gzip", "identity", "Connection: ", "close", "keep-alive", "Expect: ", "100-continue",
    "Content-Type: ", "Authorization: ", "Range: ", "User-Agent: ", "Trailer: ", ";", "=", ",",
    ":", "\"", "%", "%2F", "0\r\n\r\n", "\t", " ", "\x00", "\x7f", "\xff", "[::1]", ":80",
]


class _TimeUp(BaseException):
    """Ends the hypothesis run at the deadline (a BaseException, so hypothesis stops)."""


_STOP = (KeyboardInterrupt, SystemExit, _TimeUp)


class Fuzzer:
    """The checks run on every input, with the findings and the count of executions."""

    def __init__(self, out, slow, compare_h11):
        # Helpers shared with the unit tests: one definition of every rule.
        import test_h11_differential as differential
        import test_parser
        import test_parser_properties as properties
        self.run, self.split_bytes = test_parser.run, test_parser.split_bytes
        self.round_trip = properties.check_round_trip
        self.differential = differential if compare_h11 else None
        self.out, self.slow = out, slow
        self.executions = 0
        self.findings = {}  # kind + last line of the problem -> saved input path
        self.started = time.monotonic()
        self.next_report = self.started + 30

    def check(self, data):
        """Run every rule on ``data``; record what breaks."""
        self.executions += 1
        rng = random.Random(hashlib.sha1(data).digest())
        limits = None if rng.random() < 0.7 else {
            "request_line": rng.randint(8, 200), "field_size": rng.randint(4, 200),
            "fields": rng.randint(0, 20), "head": rng.randint(16, 2000),
            "body": rng.randint(0, 500)}
        finished, result = [], []
        started = time.process_time()
        self._guard("crash", data, lambda: result.append(
            self.run(data, [data], limits, finished=finished)))
        cost = time.process_time() - started
        if cost > self.slow:
            self._found("slow", f"{cost:.2f} s of CPU for {len(data)} bytes", data)
        if result:
            self._guard("split", data, lambda: self._check_splits(data, limits, result[0], rng))
            self._guard("round-trip", data, lambda: self.round_trip(finished))
            if self.differential is not None and limits is None and finished:
                self._guard("lenient", data, lambda: self._check_h11(data), other="harness")
        self._report()

    def _check_splits(self, data, limits, want, rng):
        cuts = sorted(rng.sample(range(1, len(data)), max(0, min(len(data) - 1, 8))))
        pieces = [data[a:b] for a, b in zip([0] + cuts, cuts + [len(data)])]
        sizes = tuple(rng.choice((1, 2, 7, 100, 65536)) for _ in range(3))
        assert self.run(data, pieces, limits, sizes) == want, f"pieces at {cuts}, {sizes}"
        if len(data) <= 2048:
            assert self.run(data, self.split_bytes(data), limits) == want, "octet by octet"

    def _check_h11(self, data):
        problem = self.differential.disagreement(data)
        assert problem is None or self.differential.explain(data) is not None, problem

    def _guard(self, kind, data, check, other="crash"):
        """Run ``check``: a failed assertion is a ``kind`` finding, any other error ``other``
        (pytest's failure exceptions included, as run() uses pytest.raises)."""
        try:
            check()
        except _STOP:
            raise
        except AssertionError:
            self._found(kind, traceback.format_exc(limit=-2), data)
        except BaseException:
            self._found(other, traceback.format_exc(limit=-3), data)

    def _found(self, kind, problem, data):
        key = (kind, problem.strip().splitlines()[-1][:200])
        if key in self.findings:
            return
        path = os.path.join(self.out, f"{kind}-{hashlib.sha1(data).hexdigest()[:12]}.bin")
        with open(path, "wb") as file:
            file.write(data)
        self.findings[key] = path
        print(f"FINDING {kind}: {key[1]}\n    input saved to {path}", flush=True)

    def _report(self, final=False):
        now = time.monotonic()
        if final or now >= self.next_report:
            self.next_report = now + 30
            elapsed = now - self.started
            print(f"{'done' if final else 'progress'}: {self.executions} executions in "
                  f"{elapsed:.0f} s ({self.executions / max(elapsed, 1e-9):.0f}/s), "
                  f"{len(self.findings)} findings", flush=True)

    def finish(self):
        self._report(final=True)
        for (kind, problem), path in sorted(self.findings.items()):
            print(f"  {kind}: {problem} ({path})")
        return 1 if self.findings else 0


def _seeds(directory):
    """The request corpus as libFuzzer seed files."""
    from corpus_format import load_corpus
    for case in load_corpus():
        with open(os.path.join(directory, case.name), "wb") as file:
            file.write(case.data)


def fuzz_with_atheris(args, atheris):
    with atheris.instrument_imports(include=["greenserve"]):
        # Instrumented for coverage feedback before the test helpers import it.
        importlib.import_module("greenserve.protocol.parser")
    fuzzer = Fuzzer(args.out, args.slow, not args.no_h11)
    corpus = os.path.join(args.out, "corpus")  # grows across runs; seeds are added each time
    os.makedirs(corpus, exist_ok=True)
    _seeds(corpus)
    workdir = tempfile.mkdtemp(prefix="greenserve-fuzz-")
    dictionary = os.path.join(workdir, "http.dict")
    with open(dictionary, "w", encoding="latin-1") as file:
        for token in DICTIONARY:
            escaped = "".join(c if " " <= c <= "~" and c not in "\"\\" else f"\\x{ord(c):02x}"
                              for c in token)
            file.write(f'"{escaped}"\n')
    deadline = time.monotonic() + args.seconds

    def one_input(data):
        if time.monotonic() >= deadline:
            shutil.rmtree(workdir, ignore_errors=True)
            sys.stdout.flush()
            os._exit(fuzzer.finish())
        fuzzer.check(data)

    # libFuzzer's own flags: a backstop on time, a per-input timeout, input length, and where
    # crash files go (our checks record findings themselves, so crashes are libFuzzer's own).
    atheris.Setup([sys.argv[0], corpus, f"-dict={dictionary}", f"-max_len={args.max_len}",
                   f"-max_total_time={int(args.seconds) + 60}", "-timeout=30",
                   f"-seed={args.seed}", f"-artifact_prefix={args.out}{os.sep}",
                   "-print_final_stats=1"], one_input)
    print(f"atheris: fuzzing for {args.seconds:.0f} s, seeds in {corpus}", flush=True)
    atheris.Fuzz()


def fuzz_with_hypothesis(args):
    fuzzer = Fuzzer(args.out, args.slow, not args.no_h11)
    from hypothesis import HealthCheck, Phase, given, seed, settings
    from hypothesis import strategies as st

    import test_parser_properties as properties
    inputs = st.one_of(properties.mutated(), properties.garbage,
                       properties.pipelines.map(lambda pipeline: pipeline[0]))
    deadline = time.monotonic() + args.seconds

    @seed(args.seed)
    @settings(max_examples=10 ** 9, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(inputs)
    def one_input(data):
        if time.monotonic() >= deadline:
            raise _TimeUp
        fuzzer.check(data)

    print(f"hypothesis: fuzzing for {args.seconds:.0f} s", flush=True)
    try:
        one_input()
    except _TimeUp:
        pass
    return fuzzer.finish()


def replay(args):
    """Check saved inputs (findings) again, e.g. after a fix."""
    fuzzer = Fuzzer(args.out, args.slow, not args.no_h11)
    for path in args.replay:
        try:
            with open(path, "rb") as file:
                data = file.read()
        except OSError as exc:
            print(f"fuzz_parser: cannot read {path}: {exc.strerror}", file=sys.stderr)
            return 2
        fuzzer.check(data)
    return fuzzer.finish()


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m loadtests.fuzz_parser",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=300, help="how long (default 300)")
    parser.add_argument("--engine", choices=("auto", "atheris", "hypothesis"), default="auto",
                        help="atheris when it imports, else hypothesis (default auto)")
    parser.add_argument("--out", default=os.path.join("results", "fuzz-parser"),
                        help="findings and the growing seed corpus (default results/fuzz-parser)")
    parser.add_argument("--max-len", type=int, default=8192, help="longest input (atheris)")
    parser.add_argument("--slow", type=float, default=0.25,
                        help="CPU seconds one whole-input parse may take (default 0.25)")
    parser.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    parser.add_argument("--no-h11", action="store_true", help="skip the comparison with h11")
    parser.add_argument("--replay", nargs="+", metavar="FILE",
                        help="run the checks on saved inputs instead of fuzzing")
    args = parser.parse_args(argv)
    if args.seconds <= 0 or args.max_len <= 0 or args.slow <= 0:
        print("fuzz_parser: --seconds, --max-len and --slow must be positive", file=sys.stderr)
        return 2
    os.makedirs(args.out, exist_ok=True)
    sys.path[:0] = [ROOT, TESTS]  # greenserve, and the rules the unit tests define
    if args.replay:
        return replay(args)
    atheris = None
    if args.engine != "hypothesis":
        try:
            import atheris
        except ImportError:
            if args.engine == "atheris":
                print("fuzz_parser: atheris is not installed (pip install atheris)",
                      file=sys.stderr)
                return 2
    try:
        if atheris is not None:
            return fuzz_with_atheris(args, atheris)
        return fuzz_with_hypothesis(args)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
