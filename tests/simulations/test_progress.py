"""Progress of ``flwr-byz run``: rich bars on a terminal, plain flushed lines otherwise."""

from __future__ import annotations

import io
import re
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from flwr_byz.simulations import cli, runner
from flwr_byz.simulations.runner import _Progress


class _Stdout(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


def _cfg(name: str = "exp/rule=krum", rounds: int = 20) -> Any:
    return SimpleNamespace(run_name=name, num_rounds=rounds)


def test_plain_flushed_lines_when_stdout_is_not_a_terminal(monkeypatch) -> None:
    out = _Stdout(tty=False)
    monkeypatch.setattr(sys, "stdout", out)
    flushes: list[bool] = []
    real_print = print

    def recording_print(*args: Any, **kwargs: Any) -> None:
        flushes.append(bool(kwargs.get("flush")))
        real_print(*args, **kwargs)

    monkeypatch.setattr(runner, "print", recording_print, raising=False)
    bar = _Progress(enabled=True, total_runs=2)
    assert bar.plain  # decided from sys.stdout.isatty()
    with bar:
        assert bar._progress is None  # no rich live display
        cfg = _cfg()
        bar.start_run(cfg, done=0)
        for t in range(1, 21):
            bar.on_round(cfg, t, {"test-accuracy": 0.5 + t / 100})
        bar.run_done(cfg)
        bar.start_run(_cfg("exp/rule=median", 10), done=4)
        bar.run_done(_cfg("exp/rule=median", 10), failed=True, error="ValueError: boom")
    lines = out.getvalue().splitlines()
    assert all("\x1b" not in line and "\r" not in line for line in lines)  # no terminal codes
    text = [re.sub(r"^\[\s*\d+s\] ", "", line) for line in lines]
    assert text[0] == "run 1/2 exp/rule=krum: starting (20 rounds)"
    rounds = [line for line in text if "round " in line and "/20" in line]
    assert len(rounds) == 10  # one line every tenth of the rounds
    assert rounds[-1] == "  exp/rule=krum: round 20/20, test accuracy 0.7000"
    assert re.fullmatch(r"run 1/2 exp/rule=krum: done in \d+s", text[11])
    assert text[12] == "run 2/2 exp/rule=median: resuming at round 5 (10 rounds)"
    assert re.fullmatch(r"run 2/2 exp/rule=median: FAILED in \d+s: ValueError: boom", text[13])
    assert flushes and all(flushes)  # every line flushed: `tail -f` follows the sweep


def test_no_plain_lines_on_a_terminal_or_when_disabled(monkeypatch) -> None:
    monkeypatch.setattr(sys, "stdout", _Stdout(tty=True))
    assert not _Progress(enabled=True, total_runs=1).plain  # the rich bars instead
    quiet = _Stdout(tty=False)
    monkeypatch.setattr(sys, "stdout", quiet)
    with _Progress(enabled=False, total_runs=1) as bar:
        bar.start_run(_cfg(), 0)
        bar.on_round(_cfg(), 1, {})
        bar.run_done(_cfg())
    assert quiet.getvalue() == ""


def test_cli_run_prints_plain_lines_to_a_pipe(tmp_path: Path, capsys) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(
        "name: p\nnum-clients: 4\nnum-byzantine: 0\nbatch-size: 16\nnum-rounds: 2\nrule: average\n",
        encoding="utf-8",
    )
    assert cli.main(["run", str(path), "--results", str(tmp_path / "r"), "--no-plot"]) == 0
    out = capsys.readouterr().out  # captured: not a terminal
    assert re.search(r"^\[\s*\d+s\] run 1/1 p/run: starting \(2 rounds\)$", out, re.M)
    assert re.search(r"^\[\s*\d+s\]   p/run: round 2/2, test accuracy 0\.\d{4}$", out, re.M)
    assert re.search(r"^\[\s*\d+s\] run 1/1 p/run: done in \d+s$", out, re.M)


def test_no_progress_silences_the_lines(tmp_path: Path, capsys) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(
        "name: p\nnum-clients: 4\nnum-byzantine: 0\nbatch-size: 16\nnum-rounds: 1\nrule: average\n",
        encoding="utf-8",
    )
    argv = ["run", str(path), "--results", str(tmp_path / "r"), "--no-plot", "--no-progress"]
    assert cli.main(argv) == 0
    assert "starting" not in capsys.readouterr().out
