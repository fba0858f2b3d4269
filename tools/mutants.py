"""Mutation run: put realistic one-line bugs into the core modules, one at a time, and check
that the tests meant to catch each one fail.

Run it from a checkout (``python -m kdcache.tools.mutants``; ``--list`` shows the mutants,
``-k TEXT`` runs those whose name contains TEXT). For each mutant the file is rewritten in
place (its original kept beside it as ``FILE.mutant-original``), the mutant's tests run with
pytest, and the original is put back byte for byte, also on Ctrl-C; a run killed harder leaves
the ``.mutant-original`` copies, which the next run restores before anything else. A mutant
whose line is no longer in the code is reported *stale* (fix the list), never silently skipped.
Do not commit in the checkout while it runs: the mutant in place would be committed with it.

First the tests of all selected mutants run on the unmutated code: a mutant "killed" by a test
that already fails would prove nothing. Exit status 0 only if every mutant is killed.
"""

import argparse
import dataclasses
import json
import pathlib
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
BACKUP = ".mutant-original"


@dataclasses.dataclass(frozen=True)
class Mutant:
    """One bug: in ``file``, the text ``old`` (found exactly once) becomes ``new``."""

    name: str
    file: str
    old: str
    new: str
    tests: str  # pytest's arguments: FILE, FILE::TEST or FILE -k EXPR, from the checkout


def _m(name: str, file: str, old: str, new: str, tests: str) -> Mutant:
    return Mutant(name, file, old, new, tests)


MUTANTS = [
    # views: where a crop lands, which way it flips, how big it is
    _m("crop box rounds its top edge down a pixel", "pipeline/views/render.py",
       'math.floor(values["crop_top"] * height + 0.5)', 'math.floor(values["crop_top"] * height)',
       "tests/test_reader.py"),
    _m("flip drawn the wrong way round", "pipeline/views/plan.py",
       "< self.flip_prob", "> self.flip_prob",
       "tests/test_plan.py::test_crops_follow_random_resized_crop_bounds"),
    _m("crop area ignores its upper bound", "pipeline/views/plan.py",
       "draws[0] * (self.crop_scale[1] - self.crop_scale[0])",
       "draws[0] * (1 - self.crop_scale[0])",
       "tests/test_plan.py::test_crops_follow_random_resized_crop_bounds"),
    # cache codecs: q8, q6, packed ids, set ranks
    _m("q8 levels truncated instead of rounded", "pipeline/cache/quantize.py",
       "np.clip(np.rint((top[..., None] - logits) / step)",
       "np.clip(np.floor((top[..., None] - logits) / step)", "tests/test_format2.py -k q8"),
    _m("q8 decoded without its scale", "pipeline/cache/quantize.py",
       "logits = -levels.astype(np.float32) * scale.astype(np.float32)[..., None]",
       "logits = -levels.astype(np.float32)", "tests/test_format2.py -k q8"),
    _m("q6 level spacing linear", "pipeline/cache/q6_layout.py",
       "UNITS = np.arange(64) + np.maximum(0, np.arange(64) - 32)",
       "UNITS = np.arange(64) + np.maximum(0, np.arange(64) - 64)", "tests/test_format2.py -k q6"),
    _m("packed class ids least significant bit first", "pipeline/cache/quantize.py",
       "shifts = np.arange(bits - 1, -1, -1, dtype=np.int64)",
       "shifts = np.arange(0, bits, dtype=np.int64)", "tests/test_format2.py -k q8"),
    _m("set rank sums the binomials in the wrong order", "pipeline/cache/id_sets.py",
       "total = table[ids, np.arange(topk)].sum(1)",
       "total = table[ids, np.arange(topk)[::-1]].sum(1)", "tests/test_format2.py -k q6"),
    _m("quantisation KL forgets the tail", "pipeline/cache/quantize.py",
       "+ tail_p * (np.log(tail_p) - np.log(tail_q))", "+ 0 * tail_p",
       "tests/test_format2.py -k topk_kl"),
    # ledger and integrity
    _m("checksum mismatch ignored", "pipeline/cache/integrity.py",
       "if found != int(checksum):", "if False:",
       "tests/test_bad_inputs.py::test_the_dataset_api_refuses_a_corrupt_region"),
    _m("non-finite targets accepted", "pipeline/cache/integrity.py",
       "    if bad:\n        return f\"{bad} non-finite", "    if False:\n        return f\"{bad} non-finite",
       "tests/test_bad_inputs.py -k nan"),
    # confinement: files named by other people's files stay in the user's folders
    _m("'..' prefix allowed in shard paths", "pipeline/data/confine.py",
       'normal == ".." or normal.startswith("../")', 'normal == ".."',
       "tests/test_hostile_inputs.py -k dotdot"),
    _m("absolute shard paths allowed", "pipeline/data/confine.py",
       'if file.startswith("/") or urls.is_url(file)', "if urls.is_url(file)",
       "tests/test_hostile_inputs.py -k shard-absolute"),
    # losses
    _m("soft KD scaled by tau, not tau squared", "trainer/kd/losses.py",
       "* tau * tau", "* tau", "tests/test_losses.py"),
    _m("tail mass shared by one class too many", "trainer/kd/topk_tail.py",
       "share = lse + (tail_mass / (num_classes - k)).log()",
       "share = lse + (tail_mass / (num_classes - k + 1)).log()", "tests/test_losses.py"),
    _m("rebuilt tail logits with the log of the tail's share negated", "trainer/kd/topk_tail.py",
       "full = (logsumexp + tail.log()).expand(-1, num_classes).clone()",
       "full = (logsumexp - tail.log()).expand(-1, num_classes).clone()", "tests/test_losses.py"),
    # joins: every sample meets its own view's targets
    _m("sample joined with the next view's targets", "trainer/data/loader.py",
       "view_targets(t, position, column) for name",
       "view_targets(t, position, (column + 1) % block.params.shape[1]) for name",
       "tests/test_joins.py -k kdloader"),
    _m("shuffle schedule shows every row the same view", "trainer/data/view_schedule.py",
       'return np.argsort(keys, axis=-1, kind="stable")[:, epoch % self.views]',
       "return np.full(rows.shape, epoch % self.views, dtype=np.int64)",
       "tests/test_augment_plan.py::test_view_schedules_cycle_or_shuffle_each_samples_views"),
    # resume
    _m("resume leaves the RNG where it was", "trainer/run/resume.py",
       '        torch.set_rng_state(state["rng"]["torch"])\n', "        pass\n",
       "tests/test_train_runs.py::test_sigterm_mid_epoch_then_resume_matches_the_uninterrupted_run"),
    _m("resume loads pickled objects", "trainer/run/resume.py",
       'map_location="cpu", weights_only=True)', 'map_location="cpu", weights_only=False)',
       "tests/test_code_rules.py"),
    # manifest identity
    _m("a shard's row digest leaves out sha1", "pipeline/data/manifest_format.py",
       'IDENTITY_COLUMNS = ("row", "shard", "split", "key", "sha1")',
       'IDENTITY_COLUMNS = ("row", "shard", "split", "key")',
       "tests/test_hostile_data.py -k identity_column_edited"),
]  # fmt: skip


def restore_leftovers() -> list[str]:
    """Put back every file a killed run left mutated; the files restored."""
    restored = []
    for backup in ROOT.rglob(f"*{BACKUP}"):
        original = backup.with_name(backup.name[: -len(BACKUP)])
        original.write_bytes(backup.read_bytes())
        backup.unlink()
        restored.append(str(original.relative_to(ROOT)))
    return restored


def _pytest(tests: list[str], timeout: float) -> tuple[int, float]:
    """pytest's exit code (-1 on timeout) and seconds for ``tests``, serially, stop at first."""
    command = [sys.executable, "-m", "pytest", "-q", "-x", "-n", "0", "-p", "no:cacheprovider",
               "-m", "not slow", *tests]  # fmt: skip
    start = time.perf_counter()
    try:
        code = subprocess.run(command, cwd=ROOT, capture_output=True, timeout=timeout).returncode
    except subprocess.TimeoutExpired:
        code = -1
    return code, time.perf_counter() - start


_COLLECT = """
import json, sys
import pytest

class Collected:
    def __init__(self):
        self.ids = []

    def pytest_collection_finish(self, session):
        self.ids = [item.nodeid for item in session.items]

found = []
for selection in json.loads(sys.argv[1]):
    plugin = Collected()
    pytest.main(["-q", "--collect-only", "-n", "0", "-p", "no:cacheprovider", "-m", "not slow",
                 *selection.split()], plugins=[plugin])
    found += plugin.ids
print("MUTANTS-NODES " + json.dumps(found))
"""


def _nodes(selections: list[str]) -> list[str]:
    """The test ids pytest selects with each of ``selections`` (collected in one process, so
    torch and the test modules are imported once), without repeats."""
    command = [sys.executable, "-c", _COLLECT, json.dumps(selections)]
    listing = subprocess.run(command, cwd=ROOT, capture_output=True, text=True).stdout
    line = next(line for line in listing.splitlines() if line.startswith("MUTANTS-NODES "))
    return list(dict.fromkeys(json.loads(line.removeprefix("MUTANTS-NODES "))))


def run_mutant(mutant: Mutant, timeout: float) -> tuple[str, float]:
    """``killed``, ``survived``, ``stale``, ``error`` or ``timeout``, and the seconds taken."""
    path = ROOT / mutant.file
    original = path.read_bytes()
    text = original.decode()
    if text.count(mutant.old) != 1:
        return "stale", 0.0
    backup = path.with_name(path.name + BACKUP)
    backup.write_bytes(original)
    try:
        path.write_text(text.replace(mutant.old, mutant.new))
        code, seconds = _pytest(mutant.tests.split(), timeout)
    finally:
        path.write_bytes(original)
        backup.unlink()
    outcome = {0: "survived", 1: "killed", -1: "timeout"}.get(code, "error")
    return outcome, seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kdcache.tools.mutants", description=__doc__)
    parser.add_argument("-k", dest="pattern", default="", help="run mutants whose name has TEXT")
    parser.add_argument("--list", action="store_true", help="list the mutants and their tests")
    parser.add_argument("--timeout", type=float, default=300, help="seconds per pytest run")
    args = parser.parse_args(argv)
    chosen = [m for m in MUTANTS if args.pattern in m.name]
    if args.list:
        for mutant in chosen:
            print(f"{mutant.name}  [{mutant.file}]  -> {mutant.tests}")
        return 0
    for file in restore_leftovers():
        print(f"restored {file} from a run that was interrupted")
    selected = _nodes(list(dict.fromkeys(m.tests for m in chosen)))
    code, seconds = _pytest(selected, args.timeout * 3)
    print(
        f"baseline: the {len(selected)} tests on the unmutated code: exit {code} ({seconds:.0f} s)"
    )
    if code != 0:
        print("the tests fail without any mutant: fix them first")
        return 1
    outcomes = []
    for mutant in chosen:
        outcome, seconds = run_mutant(mutant, args.timeout)
        outcomes.append(outcome)
        print(f"{outcome:>8}  {seconds:5.0f} s  {mutant.name}  [{mutant.file}]", flush=True)
    killed = outcomes.count("killed")
    print(f"{killed}/{len(chosen)} mutants killed ({100 * killed / max(1, len(chosen)):.0f} %)")
    return 0 if killed == len(chosen) else 1


if __name__ == "__main__":
    sys.exit(main())
