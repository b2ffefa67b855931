"""STAND-IN for an AML AutoML NLP ``text_ner`` job in the AML emulation (:mod:`.automl_standin` does classification).

What the steps after the job meet on AML, from Microsoft's docs and AutoML NLP's own code:

- Data: the MLTable's ``paths`` name CoNLL text files, one ``token label`` a line with exactly one space, an empty
  line between sentences. AutoML's data validation for NER ("Data validation", NER only, in
  https://learn.microsoft.com/azure/machine-learning/how-to-auto-train-nlp-models): the file does not start with an
  empty line; each line is empty or ``{token} {label}`` with exactly one space and no whitespace after the label;
  every label starts with ``I-`` or ``B-`` or is exactly ``O``; exactly one empty line between samples and at the end
  of the file; at least 50 training samples. A failed check fails the job before training.
- Model: saved as AutoML saves its models (MLflow sklearn flavour, see :mod:`.automl_standin`), the pickled object
  with the interface of azureml-automl-dnn-nlp's NER ``ModelWrapper`` (azureml/automl/dnn/nlp/ner/model_wrapper.py):
  ``predict_proba(X: str) -> str`` takes "string of tokens in CoNLL format, without labels" (one token a line, a
  blank line between sentences) and answers the same lines as ``token TAG probability`` ("{} {} {:.3f}"), sentences
  joined by a blank line; ``predict(X)`` (a one-element array or a string) answers a one-element list holding the
  same text without the probabilities. Tags are the argmax per token, not repaired to IOB2.

The tagger: each word's most frequent training tag (lower-cased; O when unseen), a memoriser labelled as a stand-in
in ``STAND_IN.txt``. On WNUT17's sample it beats the tiny test BERT trained for one epoch, which tags nothing.
"""

from __future__ import annotations

import re
import sys
from collections import Counter, defaultdict
from pathlib import Path
from typing import Dict, List

TASK = "text_ner"
MIN_TRAINING_SAMPLES = 50
LINE = re.compile(r"(\S+) (O|[BI]-\S+)")


class NerDataError(Exception):
    """A data validation check of AutoML NER failed: the job fails with this message."""


def read_conll_mltable(folder: Path) -> List[str]:
    """The text of each file the MLTable's ``paths`` list (AutoML NER reads them as they are: no transformation)."""
    import yaml

    spec_file = Path(folder) / "MLTable"
    if not spec_file.is_file():
        raise NerDataError(f"{folder} holds no MLTable file")
    spec = yaml.safe_load(spec_file.read_text(encoding="utf-8")) or {}
    files = [spec_file.parent / entry["file"] for entry in spec.get("paths") or [] if "file" in entry]
    if not files or not all(path.is_file() for path in files):
        raise NerDataError(f"{spec_file}: its paths name no readable CoNLL file ({[str(p) for p in files]})")
    return [path.read_text(encoding="utf-8") for path in files]


def validate(text: str, name: str) -> List[List[tuple]]:
    """The sentences (lists of ``(token, tag)``) of one CoNLL file, or :class:`NerDataError` for the first rule it
    breaks (module docstring)."""
    if text.startswith("\n"):
        raise NerDataError(f"the {name} file starts with an empty line")
    if not text.endswith("\n\n") or text.endswith("\n\n\n"):
        raise NerDataError(f"the {name} file must end with exactly one empty line")
    sentences, current = [], []
    for number, line in enumerate(text[:-1].split("\n"), 1):
        if not line:
            if not current:
                raise NerDataError(f"{name} line {number}: more than one empty line between two samples")
            sentences.append(current)
            current = []
            continue
        match = LINE.fullmatch(line)
        if match is None:
            raise NerDataError(
                f"{name} line {number}: {line!r} is not '{{token}} {{label}}' with one space and a label that "
                "starts with I- or B- or is exactly O"
            )
        current.append((match[1], match[2]))
    return sentences


class NerModel:
    """The NER ModelWrapper's interface over a most-frequent-tag memoriser."""

    def __init__(self, sentences: List[List[tuple]]):
        counts: Dict[str, Counter] = defaultdict(Counter)
        for sentence in sentences:
            for token, tag in sentence:
                counts[token.lower()][tag] += 1
        self.table = {
            word: (tag, count / sum(tags.values()))
            for word, tags in counts.items()
            for tag, count in [tags.most_common(1)[0]]
        }
        self.label_list = sorted({tag for tags in counts.values() for tag in tags})

    def predict_proba(self, X: str) -> str:
        samples = []
        for block in X.strip("\n").split("\n\n"):
            lines = []
            for token in block.split("\n"):
                tag, probability = self.table.get(token.lower(), ("O", 1.0))
                lines.append("{} {} {:.3f}".format(token, tag, probability))
            samples.append("\n".join(lines))
        return "\n\n".join(samples)

    def predict(self, X) -> List[str]:
        text = X if isinstance(X, str) else str(X.flatten()[0])
        return ["\n".join(line.rsplit(" ", 1)[0] for line in self.predict_proba(text).split("\n"))]


def train(training: Path, validation: Path, outputs: Dict[str, Path], save) -> str:
    """Validate both splits, fit the memoriser, ``save(model, folder)`` it to every output; a one-line summary."""
    import cloudpickle

    train_sentences = [s for text in read_conll_mltable(training) for s in validate(text, "training")]
    for text in read_conll_mltable(validation):
        validate(text, "validation")
    if len(train_sentences) < MIN_TRAINING_SAMPLES:
        raise NerDataError(
            f"at least {MIN_TRAINING_SAMPLES} training samples are required; the training data has "
            f"{len(train_sentences)}"
        )
    model = NerModel(train_sentences)
    # The job loads the model without this module on its path: its class travels inside model.pkl.
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    for folder in outputs.values():
        save(model, folder)
    return (
        f"STAND-IN MLflow NER model (most frequent tag per word, {len(model.label_list)} tags) from "
        f"{len(train_sentences)} training sentences read through the MLTable; AutoML NER's data checks passed"
    )
