"""User-facing errors: raised for bad input, printed as one line by the CLI (no traceback)."""


class LitFTError(Exception):
    """An error in what the user gave us (config, paths, data). The message says what and where."""


class DataError(LitFTError):
    """Bad data: the message names the file, the record index and the field."""

    def __init__(self, message: str, *, file: str | None = None, record: int | None = None, field: str | None = None):
        where = []
        if file is not None:
            where.append(str(file))
        if record is not None:
            where.append(f"record {record}")
        if field is not None:
            where.append(f"field '{field}'")
        self.file, self.record, self.field = file, record, field
        super().__init__(f"{', '.join(where)}: {message}" if where else message)
