"""The project's own error types: every failure a user can cause raises one, with a message
naming the file, key or value and what was expected; the CLI prints it without a traceback."""


class CagnetError(Exception):
    """Base class of every error the project raises on purpose."""


class ConfigError(CagnetError):
    """A config file, key, value or override is invalid."""


class DataError(CagnetError):
    """A dataset file or folder is missing, unreadable or inconsistent."""


class EmbeddingError(CagnetError):
    """A word-vector source or class-embedding file is missing, malformed or incomplete."""


class CheckpointError(CagnetError):
    """A checkpoint is missing, truncated, corrupt or does not match the model."""


class TrainingError(CagnetError):
    """Training cannot continue (for example, too many non-finite losses in a row)."""
