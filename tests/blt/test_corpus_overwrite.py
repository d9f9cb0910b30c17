"""`python -m lib.blt.data corpus --overwrite` replaces only a corpus it built (lib/common/outputs.py,
check_replaceable_folder): before, it replaced whatever folder was at the output path."""

from __future__ import annotations

import pytest

from lib.blt.data import build_default_corpus
from lib.common.errors import UsageError


def test_overwrite_rebuilds_its_own_corpus_and_refuses_anything_else(tmp_path):
    corpus = build_default_corpus(tmp_path / "corpus")
    assert build_default_corpus(corpus, overwrite=True) == corpus  # its own: rebuilt
    (corpus / "train" / "mine.txt").write_text("a user's file added to the corpus")
    with pytest.raises(UsageError, match="holds train/ besides what"):
        build_default_corpus(corpus, overwrite=True)
    assert (corpus / "train" / "mine.txt").read_text().startswith("a user's")

    notes = tmp_path / "notes"
    (notes / "sub").mkdir(parents=True)
    (notes / "thesis.tex").write_text("x")
    with pytest.raises(UsageError, match="lib.blt.data did not make"):
        build_default_corpus(notes, overwrite=True)
    assert (notes / "thesis.tex").read_text() == "x" and (notes / "sub").is_dir()
