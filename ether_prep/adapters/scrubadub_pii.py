"""scrubadub adapter: where e-mail addresses, phone numbers, URLs and given names sit in a text. The only
module that imports ``scrubadub``.

Everything here runs offline. scrubadub's own name detectors need corpora or models fetched at run time
(TextBlob's NLTK data, spaCy or Stanford models), so names come from a list the user gives, matched whole-word
and case-insensitively with scrubadub's ``UserSuppliedFilthDetector``. URLs are found with scrubadub's
detector (``http://``, ``www.``) plus bare domains as speech recognisers write them ("clinic-example.org", and
spaced: "clinic .co .uk", "nhs dot net"); e-mail addresses also when spoken or spaced ("john at clinic .co .uk",
"jane.doe @ example .org"); phone numbers with the ``phonenumbers`` rules of each region given.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ..errors import ConfigError

__all__ = ["KINDS", "PiiFinder", "Span"]

KINDS = ("email", "phone", "url", "name")
# Bare domains under common top-level domains, with an optional path: "example.org/booking".
_BARE_DOMAIN = re.compile(
    r"\b(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+"
    r"(?:com|org|net|edu|gov|info|io|co|uk|ie|de|at|ch|fr|it|es|nl|be|eu|au|nz|ca|us)\b(?:/[^\s]*)?",
    re.IGNORECASE)

# Domains and e-mail addresses as speech recognisers space them: "clinic .co .uk", "email .com", "nhs dot net",
# "john at clinic .co .uk", "jane.doe @ example .org". A label joins the next by "." (written), " ." or " . "
# (a space before the dot: the recogniser's own form) or " dot "; a sentence's full stop (". Next", a space
# only after it) never joins, so "I am fine. It was" stays as it is.
_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_JOIN = r"(?:\.|\s+\.\s*|\s+dot\s+)"
_TLD = r"(?:com|org|net|edu|gov|info|io|co|uk|ie|de|at|ch|fr|it|es|nl|be|eu|au|nz|ca|us)"
# Bounded repeats: a run of "a dot a dot a ..." costs linear time, not quadratic.
_SPACED_DOMAIN = rf"\b{_LABEL}(?:{_JOIN}{_LABEL}){{0,6}}?{_JOIN}{_TLD}(?:{_JOIN}{_TLD}){{0,2}}\b"
_SPOKEN_DOMAIN = re.compile(_SPACED_DOMAIN, re.IGNORECASE)
# A local part ("john", "jane.doe", "j dot smith", "jane underscore doe") then " at " or "@" then a domain.
_LOCAL = r"[\w+-]+(?:(?:[._]|\s+(?:dot|underscore|dash|hyphen)\s+)[\w+-]+){0,4}"
_SPOKEN_EMAIL = re.compile(rf"\b{_LOCAL}(?:\s+at\s+|\s*@\s*){_SPACED_DOMAIN}", re.IGNORECASE)

# Of overlapping finds, the most specific kind names the span (an e-mail address also looks like a URL).
_PRIORITY = ("email", "phone", "name", "url")
# The start of a spoken e-mail address before the part scrubadub finds: "jane dot " of "jane dot doe at ...".
_SPOKEN_DOTS = re.compile(r"(?:\b[\w+-]+\s+(?:dot|\.)\s+)+$", re.IGNORECASE)


@dataclass(frozen=True)
class Span:
    """Characters ``start:end`` of a text are a ``kind`` (one of :data:`KINDS`)."""

    start: int
    end: int
    kind: str


class PiiFinder:
    """Finds personal identifiers in text; build once (detectors compile their patterns) and reuse."""

    def __init__(self, names: Iterable[str] = (), regions: Sequence[str] = ("US", "GB")) -> None:
        import scrubadub
        from scrubadub.detectors import (
            EmailDetector,
            PhoneDetector,
            RegexDetector,
            UrlDetector,
            UserSuppliedFilthDetector,
        )
        from scrubadub.filth import EmailFilth, UrlFilth

        class BareDomainDetector(RegexDetector):
            name = "bare_domain"
            filth_cls = UrlFilth
            regex = _BARE_DOMAIN

        class SpokenDomainDetector(RegexDetector):
            name = "spoken_domain"
            filth_cls = UrlFilth
            regex = _SPOKEN_DOMAIN

        class SpokenEmailDetector(RegexDetector):
            name = "spoken_email"
            filth_cls = EmailFilth
            regex = _SPOKEN_EMAIL

        detectors = [EmailDetector(), UrlDetector(), BareDomainDetector(), SpokenDomainDetector(),
                     SpokenEmailDetector()]
        for region in regions:
            try:
                detectors.append(PhoneDetector(locale=f"en_{region.upper()}", name=f"phone_{region.lower()}"))
            except (ValueError, KeyError) as exc:
                raise ConfigError(f"phone region {region!r} is not known ({exc}); use two-letter country codes "
                                  f"such as US, GB, DE") from exc
        self.names = sorted({n.strip() for n in names if n.strip()}, key=len, reverse=True)
        if self.names:
            detectors.append(UserSuppliedFilthDetector(
                [{"match": n, "filth_type": "name", "ignore_case": True, "ignore_partial_word_matches": True}
                 for n in self.names], name="names"))
        self._scrubber = scrubadub.Scrubber(detector_list=detectors)

    def find(self, text: str) -> list[Span]:
        """Non-overlapping spans of identifiers in ``text``, in order."""
        if not text:
            return []
        spans = []
        for filth in self._scrubber.iter_filth(text):
            parts = getattr(filth, "filths", None) or [filth]  # overlapping finds are merged by scrubadub
            kinds = {p.type for p in parts} & set(KINDS)
            kind = next((k for k in _PRIORITY if k in kinds), "url")
            start, end = filth.beg, filth.end
            while kind == "url" and end > start + 1 and text[end - 1] in ".,;:!?)\"'":
                end -= 1  # a sentence's full stop is not part of the address
            if kind == "email" and (spoken := _SPOKEN_DOTS.search(text[:start])):
                start = spoken.start()  # "jane dot doe at ...": scrubadub starts at "doe"
            spans.append(Span(start, end, kind))
        merged: list[Span] = []
        for span in sorted(spans, key=lambda x: x.start):  # a widened find may now overlap its neighbour
            if merged and span.start < merged[-1].end:
                last = merged.pop()
                kind = min(last.kind, span.kind, key=_PRIORITY.index)
                span = Span(last.start, max(last.end, span.end), kind)
            merged.append(span)
        return merged
