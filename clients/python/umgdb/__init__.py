"""umgdb: a Python client for the umgdb photo search server (docs/python.md).

    import umgdb
    with umgdb.Client("127.0.0.1:7431") as db:
        db.ingest_folder("~/Pictures/2024")
        for hit in db.query("a red bicycle", granularity="region", k=5):
            print(hit.score, hit.path, hit.box)
"""

from .client import IMAGE_EXTENSIONS, Client
from .errors import (AuthError, ImageError, InternalError, NotFoundError, RequestError, ServerError,
                     TooLargeError, UmgdbConnectionError, UmgdbError, UmgdbTimeout, UnavailableError)
from .results import (Box, DeleteResult, FileResult, FolderReport, Heatmap, Hit, Image, IngestResult, Region,
                      ServerInfo, Stats)

__version__ = "0.1.0"

__all__ = [
    "Client", "IMAGE_EXTENSIONS",
    "UmgdbError", "UmgdbConnectionError", "UmgdbTimeout", "ServerError", "RequestError", "TooLargeError",
    "AuthError", "NotFoundError", "ImageError", "UnavailableError", "InternalError",
    "Box", "Heatmap", "Hit", "Image", "Region", "IngestResult", "DeleteResult", "ServerInfo", "Stats",
    "FileResult", "FolderReport",
]
