"""`graphgpt train` (the README's main job) as a user runs it: its tokens/s now, with each backend, against the
same command at an earlier revision of the repository, side by side in one run.

    python benchmarks/train_command.py                       # against the revision before generated kernels
    python benchmarks/train_command.py --baseline REV --rounds 5 --steps 300

Each contender is the whole command in a fresh process, `graphgpt train --steps N` with its default model and
batch (2 layers, 64 wide, batch 16 x 64 tokens) on the standard-library text, with no evaluation, checkpoint or
sample until the end. Its tokens/s are read from the loss log it writes (loss.csv: every step's tokens/s as the
progress bar shows them); a round runs every contender once, in a fresh random order, and the figure is the
median over rounds of each run's median step (its first 20 steps, compiling and warming up, left out); each
ratio to the baseline is also taken within each round, and the median of those given with their spread. The final
training losses of the two backends are compared step by step: the same within float32 rounding.

Contenders:
  baseline        the command at --baseline (that revision installed in a venv of its own under the system's
                  temporary folder, made once and kept, with this interpreter's packages as its dependencies)
  numpy           this tree, --backend numpy (the reference)
  numba           this tree, --backend numba (generated kernels: the default where numba is installed)

The kernels are compiled once before the rounds (Numba's disk cache), so no round pays for JIT.
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import site
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from blas_kernel import describe_blas  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
# The revision before the first generated kernels (commit 82c6939, "A Numba backend (issue 18, first step)").
DEFAULT_BASELINE = "82c6939^"
WARMUP_STEPS = 20


def _run(command: list[str], cwd: Path) -> None:
    subprocess.run(command, cwd=cwd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def baseline_command(revision: str) -> list[str]:
    """The graphgpt command of `revision`, installed (not editable) in a venv of its own under the system's
    temporary folder, made once and kept. Its dependencies are this interpreter's: a .pth file puts this
    interpreter's site-packages after the venv's own (their .pth files, this tree's editable install among them,
    are not read)."""
    commit = subprocess.run(["git", "rev-parse", "--short", revision], cwd=ROOT, check=True, capture_output=True,
                            text=True).stdout.strip()
    place = Path(tempfile.gettempdir()) / f"graphgpt-baseline-{commit}"
    source, venv = place / "source", place / "venv"
    command = venv / "bin" / "graphgpt"
    if not command.exists():
        shutil.rmtree(place, ignore_errors=True)
        source.mkdir(parents=True)
        archive = subprocess.run(["git", "archive", commit], cwd=ROOT, check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(source)], input=archive, check=True)
        _run([sys.executable, "-m", "venv", str(venv)], place)
        site_packages = Path(subprocess.run([str(venv / "bin" / "python"), "-c", "import sysconfig; print("
                                             "sysconfig.get_path('purelib'))"], check=True, capture_output=True,
                                            text=True).stdout.strip())
        (site_packages / "this_interpreters_packages.pth").write_text("\n".join(site.getsitepackages()) + "\n")
        _run([str(venv / "bin" / "pip"), "install", "-q", "--no-deps", str(source)], place)
    return [str(command)]


def graphgpt_location(command: list[str], folder: Path) -> str:
    """Where the graphgpt a contender runs is imported from (checked: not this tree's for the baseline)."""
    interpreter = command[0] if command[0] == sys.executable else str(Path(command[0]).with_name("python"))
    return subprocess.run([interpreter, "-c", "import graphgpt; print(graphgpt.__file__)"], cwd=folder, check=True,
                          capture_output=True, text=True).stdout.strip()


def run_train(command: list[str], steps: int, folder: Path, extra: list[str]) -> tuple[float, np.ndarray]:
    """(median tokens/s of the steps after the warm-up, every step's training loss) of one run, in `folder`
    (so that no graphgpt of the current folder shadows the command's own)."""
    for name in ("latest.npz", "loss.csv", "loss.svg"):
        (folder / name).unlink(missing_ok=True)
    environment = dict(os.environ, TQDM_DISABLE="1")
    environment.pop("PYTHONPATH", None)
    subprocess.run([*command, "train", "--steps", str(steps), "--eval-every", str(steps), "--checkpoint-every",
                    str(steps), "--eval-batches", "1", "--sample-chars", "0", "--checkpoint-dir", str(folder),
                    "--no-progress", *extra], check=True, stdout=subprocess.DEVNULL, env=environment, cwd=folder)
    with open(folder / "loss.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    rates = [float(row["tokens_per_second"]) for row in rows[WARMUP_STEPS:]]
    return statistics.median(rates), np.array([float(row["train_loss"]) for row in rows])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", default=DEFAULT_BASELINE, help="the earlier revision (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args()
    here = [sys.executable, "-m", "graphgpt"]
    contenders = {"baseline": (baseline_command(args.baseline), []),
                  "numpy": (here, ["--backend", "numpy"]), "numba": (here, ["--backend", "numba"])}
    rates: dict[str, list[float]] = {name: [] for name in contenders}
    losses: dict[str, np.ndarray] = {}
    shuffler = np.random.default_rng(0)
    print(describe_blas())  # every contender's too: they inherit this environment
    with tempfile.TemporaryDirectory() as scratch:
        folders = {name: Path(scratch) / name for name in contenders}
        for folder in folders.values():
            folder.mkdir()
        for name, (command, _) in contenders.items():
            print(f"{name}: graphgpt from {graphgpt_location(command, folders[name])}")
        run_train(here, 25, folders["numba"], ["--backend", "numba"])  # compile the kernels into the disk cache
        for round_number in range(args.rounds):
            for name in (list(contenders)[index] for index in shuffler.permutation(len(contenders))):
                command, extra = contenders[name]
                rate, losses[name] = run_train(command, args.steps, folders[name], extra)
                rates[name].append(rate)
            print(f"round {round_number + 1}: " + ", ".join(f"{name} {rates[name][-1]:,.0f}" for name in rates),
                  flush=True)
    base = statistics.median(rates["baseline"])
    print(f"\ngraphgpt train, default model, {args.steps} steps, tokens/s (median of {args.rounds} rounds; "
          f"spread min-max); x baseline: the medians' ratio, then the median (min-max) of each round's own ratio")
    for name, values in rates.items():
        middle = statistics.median(values)
        # Paired within each round (runs seconds apart): the machine's load moves over minutes, and a ratio taken
        # within a round cancels most of it where the medians' ratio keeps it.
        paired = [value / baseline for value, baseline in zip(values, rates["baseline"])]
        print(f"  {name:9s} {middle:9,.0f}  ({min(values):,.0f}-{max(values):,.0f})  {middle / base:5.2f}x baseline"
              f", paired {statistics.median(paired):.2f}x ({min(paired):.2f}-{max(paired):.2f})"
              f"  final training loss {losses[name][-1]:.6f}")
    apart = np.abs(losses["numba"] - losses["numpy"]) / np.abs(losses["numpy"])
    print(f"training losses, numba against numpy over {args.steps} steps: at most {apart.max():.2e} apart "
          f"(relative), {apart[-1]:.2e} at the last step")


if __name__ == "__main__":
    main()
