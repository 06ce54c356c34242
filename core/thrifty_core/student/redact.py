"""The default redaction hook: credentials (API keys, tokens, private keys, passwords),
emails, IBANs, phone numbers and payment card numbers.

Runs on every captured text before it reaches the dataset store. Pure functions; the hook is a
plain `Callable[[str], str]`, so a deployment can chain its own after this one.
"""

from __future__ import annotations

import re
from collections.abc import Callable

Redactor = Callable[[str], str]

EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
# 13-19 digits, optionally grouped by single spaces or dashes (Luhn-checked below).
CARD = re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])")
# International or national numbers: 7-15 digits with the usual separators.
PHONE = re.compile(r"(?<![\w+])\+?\(?\d{1,4}\)?(?:[ .-]?\(?\d{2,4}\)?){2,5}(?!\w)")

DATE = re.compile(r"^\d{4}[-./]\d{1,2}[-./]\d{1,2}$|^\d{1,2}[-./]\d{1,2}[-./]\d{2,4}$")

# Credentials: provider and cloud keys, bearer tokens and JWTs, PEM private keys.
SECRET = re.compile(
    r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?-----END [A-Z ]*PRIVATE KEY-----"
    r"|\b(?:sk|rk|pk)-(?:[A-Za-z0-9]+-)*[A-Za-z0-9_-]{16,}"  # sk-..., sk-proj-..., sk-ant-...
    r"|\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"  # AWS access key ids
    r"|\bgh[pousr]_[A-Za-z0-9]{30,}"  # GitHub tokens
    r"|\bxox[abposr]-[A-Za-z0-9-]{10,}"  # Slack tokens
    r"|\bAIza[0-9A-Za-z_-]{35}"  # Google API keys
    r"|\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"  # JWTs
    r"|(?<=Bearer )[A-Za-z0-9._~+/-]{16,}=*",
    re.DOTALL,
)
# "password: hunter2", "api_key=...", "secret = '...'": the value after the name.
ASSIGNED = re.compile(
    r"(?i)\b((?:pass(?:word|wd|phrase)?|pwd|secret|api[_ -]?key|access[_ -]?token|"
    r"auth[_ -]?token|client[_ -]?secret)\b\s*[:=]\s*)(['\"]?)[^\s'\",;]{3,}\2"
)
IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?\b")

SECRET_MASK = "[SECRET]"
IBAN_MASK = "[IBAN]"
EMAIL_MASK = "[EMAIL]"
CARD_MASK = "[CARD]"
PHONE_MASK = "[PHONE]"


def luhn_ok(digits: str) -> bool:
    """The Luhn checksum every payment card number satisfies."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def _card(match: re.Match[str]) -> str:
    digits = re.sub(r"\D", "", match.group(0))
    return CARD_MASK if 13 <= len(digits) <= 19 and luhn_ok(digits) else match.group(0)


def _phone(match: re.Match[str]) -> str:
    text = match.group(0)
    if DATE.match(text.strip()):
        return text
    digits = re.sub(r"\D", "", text)
    return PHONE_MASK if 7 <= len(digits) <= 15 else text


def redact(text: str) -> str:
    """Mask credentials, emails, IBANs, Luhn-valid card numbers and phone numbers in `text`."""
    if not text:
        return text
    out = SECRET.sub(SECRET_MASK, text)
    out = ASSIGNED.sub(lambda m: f"{m.group(1)}{SECRET_MASK}", out)
    out = EMAIL.sub(EMAIL_MASK, out)
    out = IBAN.sub(IBAN_MASK, out)
    out = CARD.sub(_card, out)
    return PHONE.sub(_phone, out)


def no_redaction(text: str) -> str:
    """The hook used when a route opts out of redaction."""
    return text
