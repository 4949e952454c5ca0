"""The errors a user's data, config or request can cause (not bugs).

Every message names the input (file and line, config key, request field), shows the value received,
states what was expected and says how to fix it. Command lines print it without a traceback
(intentrec.config.hydra_main); servers answer it to the client and keep serving. Standard library
only, so the light client (`serving.client`) can raise and catch them.
"""

from __future__ import annotations


class IntentrecError(ValueError):
    """Base class for errors caused by the user's data or config (not by a bug)."""


class DataError(IntentrecError):
    """A data file is malformed: names file, line, column, value, what was expected and the fix."""


class ConfigError(IntentrecError):
    """A config key has a bad value: names the key, the value, what was expected and the fix."""
