"""The web console: the pages an on-call engineer opens first, served by the API itself.

Two halves, so that the access control stays the API's own:

- ``pages``: the shell pages (layout, navigation, empty regions) and their CSS and JS.
  They are public and hold no data, so a browser can load them before it has a
  credential, and API Gateway serves them without its authorizer.
- ``fragments``: the data, as server-rendered HTML fragments, each route declaring its
  scope like every other route. The console's script fetches them with the credential
  the user pasted at sign-in (``Authorization: Bearer``) and swaps them into the page.

Actions (cancel, redrive, purge, pause) are calls to the JSON API with the same header.
Nothing authenticates by cookie, so another site cannot make a browser send a
credentialed request: the console is safe from cross-site request forgery by
construction, and the API's Sec-Fetch-Site/Origin guard stays in front as well.
"""

from functions.api.console.fragments import router as fragments_router
from functions.api.console.pages import router as pages_router

__all__ = ["fragments_router", "pages_router"]
