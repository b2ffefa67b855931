"""Named-entity recognition (``dataset.task=ner``): what the stages ask of the task, in one place.

Data: IOB2 sentences (:mod:`finetune.data.ner_prepare`). Training: ``AutoModelForTokenClassification`` with the
word's tag on its first sub-token and stride windows for long sentences (:mod:`finetune.serve.ner_score`, the
code that serves it); no class weights. Metric: entity-level F1 as seqeval's strict IOB2 mode computes it
(:mod:`finetune.tasks.ner_metrics`); ``val_f1_entity`` is the primary metric, ``f1_entity`` the selection
metric. The decision is argmax per word, repaired to IOB2 (:func:`finetune.serve.ner_score.repair_tags`), the same
at training, selection and serving. Baseline candidate: the CRF (:mod:`finetune.tasks.ner_crf`); learning
check one-liner: each word's most frequent train tag. Response: entities with character offsets. AML AutoML:
``text_ner``.
"""

from __future__ import annotations

import json
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Dict, List

from finetune.data.ner import read_prepared
from finetune.report.ner import ERRORS_FILE, ner_data_section, ner_selection_section
from finetune.selection.metrics import NER_METRIC_NAMES
from finetune.serve import ner_score
from finetune.serve.ner_score import DEFAULT_STRIDE, IGNORED, encode_sentence, owners, repair_tags
from finetune.tasks.ner_crf import run_crf
from finetune.tasks.ner_metrics import entity_metrics, error_kinds, wrong_sentences

ONE_LINER = "most frequent train tag per word"


class NerTask:
    name = "ner"
    primary_metric = "val_f1_entity"
    select_metric = "f1_entity"
    metric_names = NER_METRIC_NAMES
    model_class = "AutoModelForTokenClassification"
    problem_type = None  # transformers' token classification has one (cross-entropy over tags)
    automl_task = "text_ner"
    baseline_name = "crf"
    response_key = "entities"
    # The val metric merges windows back into sentences by their position in the val set, and transformers'
    # length grouping reorders evaluation too (Trainer._get_eval_sampler uses LengthGroupedSampler under
    # train_sampling_strategy=group_by_length): NER trains and evaluates in dataset order.
    trainer_overrides = {"train_sampling_strategy": "random"}

    # ------------------------------------------------------------------ training

    def encode(self, path: str, tokenizer, labels: List[str], max_length: int):
        """The split's windows as a Dataset (``input_ids``, ``attention_mask``, ``labels``) and, per window, the
        (sentence, word ids) that :meth:`compute_metrics` needs to merge windows back into sentences."""
        from datasets import Dataset

        tag_ids = {tag: index for index, tag in enumerate(labels)}
        rows, windows = defaultdict(list), []
        for number, sentence in enumerate(read_prepared(path)):
            ids = [tag_ids.get(tag, tag_ids["O"]) for tag in sentence.tags]  # a type train lacks is O to the model
            for item in encode_sentence(tokenizer, sentence.tokens, max_length, DEFAULT_STRIDE, ids):
                windows.append((number, item["window"], item["word_ids"]))
                for key in ("input_ids", "attention_mask", "token_type_ids", "labels"):
                    if key in item:
                        rows[key].append(item[key])
        dataset = Dataset.from_dict(dict(rows))
        dataset.windows = windows
        return dataset

    def collator(self, tokenizer, pad_to_multiple_of):
        from transformers import DataCollatorForTokenClassification

        return DataCollatorForTokenClassification(
            tokenizer, pad_to_multiple_of=pad_to_multiple_of, label_pad_token_id=IGNORED
        )

    def training_loss(self, train_set, labels, setting):
        """The model's own loss, no weights: token tags are weighted equally (an O-heavy loss is what the entity
        metric is chosen against)."""
        return None, None, None

    def compute_metrics(self, val_file: str, val_set, labels: List[str]):
        """The Trainer's ``compute_metrics`` over val windows: each word's tag from the window it is most central
        in, argmax repaired to IOB2, entity metrics against the val split's gold tags."""
        import numpy as np

        gold = [s.tags for s in read_prepared(val_file)]
        windows = val_set.windows

        def compute(prediction):
            logits = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
            best = np.asarray(logits).argmax(-1)
            by_sentence = defaultdict(list)
            for position, (sentence, window, word_ids) in enumerate(windows):
                by_sentence[sentence].append((window, word_ids, best[position]))
            predicted = []
            for sentence, tags in enumerate(gold):
                pieces = by_sentence.get(sentence, [])
                owner = owners([window for window, _, _ in pieces], len(tags))
                words = ["O"] * len(tags)
                for number, (_, word_ids, row) in enumerate(pieces):
                    previous = None
                    for column, word in enumerate(word_ids):
                        if word is not None and word != previous and owner[word] == number:
                            words[word] = labels[int(row[column])]
                        previous = word
                predicted.append(repair_tags(words))
            return entity_metrics(gold, predicted)

        return compute

    def candidate_extras(self) -> dict:
        return {"stride": DEFAULT_STRIDE}

    def fit_baseline(self, train_file: str, val_file: str, labels: List[str], metric: str) -> dict:
        """The learning check's one-liner: every word tagged with its most frequent train tag (O if unseen)."""
        started = time.time()
        counts: Dict[str, Counter] = defaultdict(Counter)
        for sentence in read_prepared(train_file):
            for token, tag in zip(sentence.tokens, sentence.tags):
                counts[token.lower()][tag] += 1
        val = read_prepared(val_file)
        predicted = [
            repair_tags([counts[t.lower()].most_common(1)[0][0] if t.lower() in counts else "O" for t in s.tokens])
            for s in val
        ]
        metrics = entity_metrics([s.tags for s in val], predicted)
        return {
            "model": ONE_LINER,
            "metric": metric,
            "value": metrics.get(metric),
            "val": metrics,
            "fit_seconds": round(time.time() - started, 2),
        }

    # ------------------------------------------------------------------ baseline, selection, serving

    def baseline_description(self, plan) -> str:
        return f"the NER baseline: a linear-chain CRF, c1/c2 chosen on val within {plan.automl.time_budget_s} s"

    def run_baseline(self, data, plan, out_dir: Path) -> dict:
        """The local baseline candidate (the automl stage's): the CRF, c1/c2 chosen on val in the stage's time."""
        return run_crf(data.directory, list(data.labels), out_dir, time_budget_s=plan.automl.time_budget_s)

    def evaluate(
        self,
        candidates: dict,
        test_path,
        labels: List[str],
        out_dir: Path | None = None,
        *,
        val_path=None,
        settings=None,
        keep_rule=(),
    ) -> dict:
        """Each candidate folder's answers on the test split (by its tokens, as the endpoint's ``tokens`` request):
        ``{name: {"family", "decision", "test", "errors", "examples"}}``; a broken candidate gets its ``error``.
        The decision (argmax per word, repaired to IOB2) is not chosen on val: ``val_path``/``settings`` are the
        classifiers' and unused. With ``out_dir``, the errors and examples go to ``ner_errors.json`` for the report."""
        test = read_prepared(test_path)
        gold = [s.tags for s in test]
        results = {}
        for name, folder in candidates.items():
            family = None
            try:
                candidate = json.loads((Path(folder) / "candidate.json").read_text(encoding="utf-8"))
                family = candidate.get("family")
                if candidate.get("task") != self.name:
                    raise ValueError(f"it is a {candidate.get('task', 'single_label')} model, this run's data is NER")
                missing = sorted(set(labels) - set(candidate["labels"]))
                if missing:
                    raise ValueError(f"it does not know the tags {missing[:5]} of this run")
                tagger = ner_score.load_tagger(Path(folder))
                predicted = [tags for tags, _ in tagger.tag([s.tokens for s in test])]
                results[name] = {
                    "family": family,
                    "decision": {"rule": "argmax_iob2"},
                    "test": entity_metrics(gold, predicted),
                    "errors": error_kinds(gold, predicted),
                    "examples": wrong_sentences([s.tokens for s in test], gold, predicted),
                }
            except Exception as error:  # noqa: BLE001 - one broken candidate is reported, not fatal
                print(f"candidate '{name}' could not be scored: {type(error).__name__}: {error}", flush=True)
                results[name] = {"family": family, "error": f"{type(error).__name__}: {error}"}
        if out_dir is not None:
            Path(out_dir).mkdir(parents=True, exist_ok=True)
            (Path(out_dir) / ERRORS_FILE).write_text(
                json.dumps(
                    {
                        name: {key: entry[key] for key in ("errors", "examples")}
                        for name, entry in results.items()
                        if "errors" in entry
                    },
                    indent=2,
                    ensure_ascii=False,
                )
                + "\n",
                encoding="utf-8",
            )
        return results

    def data_report(self, summary, figures, run_dir: Path) -> list:
        """The report's data section: sentences, entity types and tag problems per split."""
        return ner_data_section(summary)

    def selection_report(self, summary, figures, run_dir: Path) -> list:
        """The report's candidates section: entity P/R/F1, per type, error kinds and wrong examples."""
        return ner_selection_section(summary, run_dir)

    def split_texts(self, path) -> list:
        """Each sentence's words joined by spaces (what the budget's calibration times)."""
        return [" ".join(s.tokens) for s in read_prepared(path)]

    def sample_request(self, test_path, size: int = 2) -> dict:
        return {"data": [{"text": " ".join(s.tokens)} for s in read_prepared(test_path)[:size]]}


NER_TASK = NerTask()
