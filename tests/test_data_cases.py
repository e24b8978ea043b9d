"""Issue 16: every unusual or broken file built by tests/data_cases.py (encodings, structure, schema, content, file
level: at least 150) is answered as written down before it was run: refused at the door (runner.py --check, exit
2) with a message naming the file and matching the promise, or read with exactly the promised kept and dropped
counts (so every record is read and rows read = kept + dropped) and examples read as what they are. No hang (each
case has 10 s), no traceback."""
import pytest
from data_cases import run_case, verdict
from data_cases_list import cases

CASES = cases()


def test_the_generator_covers_every_category_and_every_class_of_the_issue():
    assert len(CASES) >= 150
    by_cat = {c.category for c in CASES}
    assert by_cat == {"encoding", "structure", "schema", "content", "file"}
    by_issue = {}
    for c in CASES:
        by_issue[c.issue] = by_issue.get(c.issue, 0) + 1
    classes = ("hang", "traceback", "lost", "misread", "message")
    assert all(by_issue.get(k, 0) >= (3 if k == "hang" else 5) for k in classes), by_issue
    assert len({c.id for c in CASES}) == len(CASES), "case names are unique"


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_every_case_is_answered_as_promised(case, tmp_path):
    got = run_case(case, tmp_path)
    why = verdict(case, got, tmp_path / case.filename)
    assert why is None, why
