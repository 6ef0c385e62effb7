"""The reference of the API benchmark: a bare Falcon app answering a constant JSON body,
served by gunicorn with the same settings as wire-api."""

from typing import Any

import falcon


class Constant:
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = {"status": "ok"}


application: Any = falcon.App()
application.add_route("/v1/status", Constant())
