"""Named-entity data: reading CoNLL, JSONL tokens + tags and JSONL spans into IOB2-tagged sentences.

Formats (issue 27):

- CoNLL: one ``token<TAB or spaces>tag`` a line (the tag is the LAST field, so CoNLL-2003's four columns work),
  a blank (or whitespace-only) line between sentences, ``-DOCSTART-`` lines skipped.
- JSONL tokens: ``{"tokens": [...], "tags": [...]}`` per line.
- JSONL spans: ``{"text": ..., "entities": [{"start", "end", "label"}]}``; the text is split into words
  (:func:`words_with_offsets`) and an entity that starts or ends inside a word is widened to the word and
  counted (``entities_unaligned``), as is one overlapping an earlier entity (dropped, ``entities_overlapping``).

Tags are IOB2 after reading: IOBES (``S-``/``E-`` seen anywhere in a file) is converted, and an ``I-X`` that no
``B-X``/``I-X`` opens becomes ``O``, which is what seqeval's strict IOB2 mode (the metric, :mod:`finetune.tasks.
ner_metrics`) does with it: it is never part of an entity. Those repairs are counted in :class:`NerReadStats`
(the data report shows them). Every bad input is a one-line :class:`UserError` naming the file and line.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Tuple

from finetune.errors import UserError

CONLL_SUFFIXES = (".conll", ".conllu", ".bio", ".iob", ".iob2", ".tsv", ".txt")
JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")
OUTSIDE = "O"
_TAG = re.compile(r"^([BIES])-(.+)$")
# A word is a run of letters/digits/underscore or one other non-space character: the same split is used for
# span data and for raw text at the endpoint, so "@user" -> "@", "user" in both.
_WORD = re.compile(r"\w+|[^\w\s]", re.UNICODE)


@dataclass
class Sentence:
    tokens: List[str]
    tags: List[str]

    def to_dict(self) -> dict:
        return {"tokens": self.tokens, "tags": self.tags}


@dataclass
class NerReadStats:
    """What reading repaired or skipped, per file (the data report's NER section)."""

    sentences: int = 0
    tokens: int = 0
    docstart_lines: int = 0
    iobes_converted: bool = False
    # I-X tags with no open X: made O (seqeval strict IOB2 never counts them in an entity)
    stray_inside_tags: int = 0
    entities_unaligned: int = 0
    entities_overlapping: int = 0
    entity_counts: Dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def read_ner_file(path: Path | str) -> Tuple[List[Sentence], NerReadStats]:
    """Sentences of one file in any supported format (chosen by the file's suffix and, for JSONL, its keys)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    suffixes = [s.lower() for s in path.suffixes if s.lower() != ".gz"]
    suffix = suffixes[-1] if suffixes else ""
    stats = NerReadStats()
    if suffix in JSONL_SUFFIXES:
        raw = list(_read_jsonl(path, stats))
    elif suffix in CONLL_SUFFIXES or not suffix:
        raw = list(_read_conll(path, stats))
    else:
        raise UserError(
            f"{path}: unknown NER file type {suffix!r}; use CoNLL ({', '.join(CONLL_SUFFIXES)}) "
            f"or JSONL ({', '.join(JSONL_SUFFIXES)})"
        )
    iobes = any(tag[:2] in ("S-", "E-") for _, _, tags in raw for tag in tags)
    stats.iobes_converted = iobes
    sentences = []
    for where, tokens, tags in raw:
        tags = to_iob2(tags, where, iobes, stats)
        sentences.append(Sentence(list(tokens), tags))
        stats.sentences += 1
        stats.tokens += len(tokens)
        for tag in tags:
            if tag.startswith("B-"):
                stats.entity_counts[tag[2:]] = stats.entity_counts.get(tag[2:], 0) + 1
    if not sentences:
        raise UserError(f"{path}: no sentences")
    return sentences, stats


def is_ner_file(path: Path | str) -> bool:
    """Whether ``dataset.task=auto`` should read ``path`` as NER data: a CoNLL suffix, or JSONL whose first
    record has ``tokens`` + ``tags`` or ``text`` + ``entities``."""
    path = Path(path)
    suffixes = [s.lower() for s in path.suffixes if s.lower() != ".gz"]
    suffix = suffixes[-1] if suffixes else ""
    if suffix in (".conll", ".conllu", ".bio", ".iob", ".iob2"):
        return True
    if suffix not in JSONL_SUFFIXES or not path.is_file():
        return False
    try:
        with _open(path) as handle:
            for line in handle:
                if line.strip():
                    record = json.loads(line)
                    return isinstance(record, dict) and (
                        {"tokens", "tags"} <= record.keys() or {"text", "entities"} <= record.keys()
                    )
    except (OSError, ValueError, UnicodeDecodeError):
        return False
    return False


def to_iob2(tags: List[str], where: str, iobes: bool, stats: Optional[NerReadStats] = None) -> List[str]:
    """``tags`` as strict IOB2: IOBES converted, stray ``I-X`` made ``O`` (counted in ``stats``)."""
    converted, open_type = [], None
    for position, tag in enumerate(tags):
        if not isinstance(tag, str):
            raise UserError(f"{where}: tag {tag!r} is not a string")
        if tag == OUTSIDE:
            converted.append(tag)
            open_type = None
            continue
        match = _TAG.match(tag)
        if not match or (not iobes and match.group(1) in "ES"):
            raise UserError(
                f"{where}: tag {tag!r} (token {position + 1}) is not O, B-TYPE or I-TYPE "
                "(IOBES: also S-TYPE, E-TYPE); unknown tag scheme"
            )
        prefix, kind = match.groups()
        if prefix in "BS":
            converted.append(f"B-{kind}")
        elif open_type == kind:
            converted.append(f"I-{kind}")
        else:
            converted.append(OUTSIDE)
            if stats is not None:
                stats.stray_inside_tags += 1
            open_type = None
            continue
        # S and E close the entity in IOBES; an I or E after them opens nothing.
        open_type = kind if prefix in "BI" else None
    return converted


def entity_types(tags: Iterable[str]) -> List[str]:
    return sorted({tag[2:] for tag in tags if tag != OUTSIDE})


def tag_names(types: Iterable[str]) -> List[str]:
    """The model's label list: O first, then B-/I- per type (sorted, so equal type sets give equal heads)."""
    return [OUTSIDE] + [f"{prefix}-{kind}" for kind in sorted(types) for prefix in ("B", "I")]


def words_with_offsets(text: str) -> List[Tuple[str, int, int]]:
    return [(match.group(), match.start(), match.end()) for match in _WORD.finditer(text)]


def spans_to_sentence(text: str, entities: list, where: str) -> Tuple[Sentence, int, int]:
    """Words and IOB2 tags of a text with character-span entities; returns the unaligned and overlapping counts."""
    if not isinstance(text, str) or not text.strip():
        raise UserError(f"{where}: empty sentence (no text)")
    if not isinstance(entities, list):
        raise UserError(f"{where}: 'entities' must be a list of {{start, end, label}}")
    words = words_with_offsets(text)
    tags = [OUTSIDE] * len(words)
    unaligned = overlapping = 0
    for entity in entities:
        try:
            start, end, label = entity["start"], entity["end"], entity["label"]
        except (TypeError, KeyError):
            raise UserError(f"{where}: entity {entity!r} needs start, end and label") from None
        if (
            not isinstance(start, int)
            or not isinstance(end, int)
            or isinstance(start, bool)
            or not 0 <= start < end <= len(text)
        ):
            raise UserError(
                f"{where}: entity span {start}..{end} ({label}) is outside its text of {len(text)} "
                "characters (0 <= start < end <= length)"
            )
        if not isinstance(label, str) or not label or label[:2] in ("B-", "I-"):
            raise UserError(f"{where}: entity label {label!r} must be a type name without B-/I-")
        covered = [i for i, (_, word_start, word_end) in enumerate(words) if word_start < end and start < word_end]
        if not covered:
            unaligned += 1
            continue
        if words[covered[0]][1] != start or words[covered[-1]][2] != end:
            unaligned += 1
        if any(tags[i] != OUTSIDE for i in covered):
            overlapping += 1
            continue
        tags[covered[0]] = f"B-{label}"
        for i in covered[1:]:
            tags[i] = f"I-{label}"
    return Sentence([word for word, _, _ in words], tags), unaligned, overlapping


def write_jsonl(sentences: List[Sentence]) -> bytes:
    return "".join(json.dumps(s.to_dict(), ensure_ascii=False) + "\n" for s in sentences).encode("utf-8")


def read_prepared(path: Path | str) -> List[Sentence]:
    """A prepared NER split (``tokens`` + ``tags`` JSONL, already IOB2): what training and scoring read."""
    with open(path, encoding="utf-8") as handle:
        return [Sentence(**json.loads(line)) for line in handle if line.strip()]


def _open(path: Path):
    if path.suffix.lower() == ".gz":
        import gzip

        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")


def _read_conll(path: Path, stats: NerReadStats):
    tokens: List[str] = []
    tags: List[str] = []
    first_line = 0
    try:
        with _open(path) as handle:
            for number, line in enumerate(handle, 1):
                line = line.rstrip("\r\n")
                if not line.strip():
                    if tokens:
                        yield f"{path} line {first_line}", tokens, tags
                    tokens, tags = [], []
                    continue
                fields = line.split("\t") if "\t" in line else line.split()
                fields = [f.strip() for f in fields]
                if fields[0] == "-DOCSTART-":
                    stats.docstart_lines += 1
                    continue
                if len(fields) < 2 or not fields[0] or not fields[-1]:
                    raise UserError(
                        f"{path} line {number}: malformed CoNLL line {line[:60]!r}: expected "
                        "'token<TAB>tag' (or token and tag separated by spaces)"
                    )
                if not tokens:
                    first_line = number
                tokens.append(fields[0])
                tags.append(fields[-1])
    except UnicodeDecodeError as error:
        raise UserError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start})") from None
    if tokens:
        yield f"{path} line {first_line}", tokens, tags


def _read_jsonl(path: Path, stats: NerReadStats):
    try:
        with _open(path) as handle:
            for number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                where = f"{path} line {number}"
                try:
                    record = json.loads(line)
                except ValueError as error:
                    raise UserError(f"{where}: not JSON ({error})") from None
                if not isinstance(record, dict):
                    raise UserError(f"{where}: expected an object with tokens + tags or text + entities")
                if "tokens" in record or "tags" in record:
                    tokens, tags = record.get("tokens"), record.get("tags")
                    if not isinstance(tokens, list) or not isinstance(tags, list):
                        raise UserError(f"{where}: 'tokens' and 'tags' must both be lists")
                    if not tokens:
                        raise UserError(f"{where}: empty sentence (no tokens)")
                    if len(tokens) != len(tags):
                        raise UserError(f"{where}: {len(tokens)} tokens but {len(tags)} tags")
                    if not all(isinstance(t, str) and t.strip() for t in tokens):
                        raise UserError(f"{where}: every token must be a non-empty string")
                    yield where, tokens, tags
                elif "text" in record and "entities" in record:
                    sentence, unaligned, overlapping = spans_to_sentence(record["text"], record["entities"], where)
                    stats.entities_unaligned += unaligned
                    stats.entities_overlapping += overlapping
                    yield where, sentence.tokens, sentence.tags
                else:
                    raise UserError(
                        f"{where}: expected keys tokens + tags or text + entities, got {sorted(record)[:6]}"
                    )
    except UnicodeDecodeError as error:
        raise UserError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start})") from None
