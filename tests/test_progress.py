"""Console progress: a bar on a terminal, plain log lines otherwise."""

import io
import logging

from raysoup.progress import Progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_not_a_tty_gives_log_lines_and_no_bar(caplog):
    stream = io.StringIO()
    with caplog.at_level(logging.INFO, logger="raysoup"):
        bar = Progress(total=3, desc="evaluate", unit="models", stream=stream, every_s=3600)
        for i in range(3):
            bar.update(1, f"model-{i}")
        bar.close()
    assert stream.getvalue() == ""  # tqdm stayed silent
    lines = [r.getMessage() for r in caplog.records]
    # The first update and the last one; the middle one falls inside every_s.
    assert len(lines) == 2
    assert lines[0].startswith("evaluate: 1/3 models (") and lines[0].endswith("model-0")
    assert lines[1].startswith("evaluate: 3/3 models (") and lines[1].endswith("model-2")


def test_terminal_gives_a_bar_and_no_log_lines(caplog):
    stream = Terminal()
    with caplog.at_level(logging.INFO, logger="raysoup"):
        bar = Progress(total=2, desc="evaluate", unit="models", stream=stream)
        bar.update(1, "zeroshot")
        bar.update(1, "trial-000")
        bar.close()
    assert "\r" in stream.getvalue() and "2/2" in stream.getvalue()
    assert not caplog.records
