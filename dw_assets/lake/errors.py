"""The lake's error, below every lake module (storage, S3, the landing zone) so none imports another back."""


class LakeError(RuntimeError):
    """A lake read or write that cannot be done, with the path it was about."""
