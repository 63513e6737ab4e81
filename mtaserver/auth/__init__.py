"""SMTP AUTH: password checkers and the per-IP failure limit."""

from mtaserver.auth.checkers import CheckerChoice, IPasswordChecker
from mtaserver.auth.limiter import AuthFailureLimiter
from mtaserver.auth.passwords import hash_password, verify_password
from mtaserver.auth.users import LocalUserChecker

__all__ = [
    "AuthFailureLimiter",
    "CheckerChoice",
    "IPasswordChecker",
    "LocalUserChecker",
    "hash_password",
    "verify_password",
]
