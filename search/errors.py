"""The library's exceptions: one base class, one subclass per kind of failure.

The library raises these; only the CLI, the HTTP API and the UI turn them into exit codes,
HTTP statuses or messages.
"""


class ShelfsightError(Exception):
    """Base class of every error Shelfsight raises on purpose."""


class BadInputError(ShelfsightError, ValueError):
    """The caller's input cannot be used (empty query, unreadable image, unknown filter field...)."""


class ModelUnavailableError(ShelfsightError):
    """The embedding model cannot be loaded (offline, unknown name, broken directory)."""


class IncompatibleCollectionError(ShelfsightError):
    """The collection was built with another model or schema than the one asked for."""


class CollectionNotFoundError(ShelfsightError):
    """The collection does not exist in the store."""


class StoreUnavailableError(ShelfsightError):
    """The vector store cannot be opened or reached (locked directory, server down...)."""


class ProductNotFoundError(BadInputError):
    """No product with that id in the collection."""
