"""Password hashers for accounts carried over from the older HOMEPOT database.

The older system stored raw bcrypt strings (`$2b$12$<salt><checksum>`) made by Python's
`bcrypt.hashpw`. `manage.py import_users` stores them as `legacy_bcrypt$<raw hash>`; Django
then checks a login against the old hash with this hasher and, because it is not the
preferred hasher (and `must_update` says so too, should it ever be listed first), re-hashes
the password with the preferred one (bcrypt_sha256, cost 12) on the first successful login.
After that the legacy string is gone for good.
"""

import re

from django.contrib.auth.hashers import BCryptPasswordHasher

# What the older system wrote: bcrypt's modular-crypt string, variant 2a/2b/2y, cost 04-31,
# 22 characters of salt and 31 of checksum in bcrypt's base64 alphabet.
LEGACY_BCRYPT_RE = re.compile(r"^\$2[aby]\$(0[4-9]|[12]\d|3[01])\$[./A-Za-z0-9]{53}$")

# bcrypt only ever looked at the first 72 bytes of a password, and the bcrypt library the old
# system used cut longer ones silently. bcrypt 5 refuses them instead, so cut them here the
# same way, or a user with a long password could never log in (and a long guess would 500).
BCRYPT_MAX_PASSWORD_BYTES = 72


def is_legacy_bcrypt_hash(value: str) -> bool:
    return bool(LEGACY_BCRYPT_RE.match(value or ""))


class LegacyBcryptPasswordHasher(BCryptPasswordHasher):
    """Checks passwords against raw bcrypt hashes from the older HOMEPOT database.

    Stored form: `legacy_bcrypt$$2b$12$...` (the prefix plus the unchanged raw hash). List it
    after the real hashers in PASSWORD_HASHERS; Django then replaces the hash after the first
    successful check.
    """

    algorithm = "legacy_bcrypt"

    def encode(self, password, salt):
        bcrypt = self._load_library()
        data = bcrypt.hashpw(password.encode()[:BCRYPT_MAX_PASSWORD_BYTES], salt)
        return f"{self.algorithm}${data.decode('ascii')}"

    def must_update(self, encoded):
        return True

    @classmethod
    def from_raw(cls, raw_hash: str) -> str:
        """The stored form of a raw legacy hash (validate it with is_legacy_bcrypt_hash first)."""
        return f"{cls.algorithm}${raw_hash}"
