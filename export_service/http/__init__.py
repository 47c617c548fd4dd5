"""The HTTP layer (aiohttp): the app factory and its middlewares (app), typed
state (keys), the routes (routes), the streamed responses (streamed,
zip_response, file_responses), preconditions and Range (conditional,
byte_ranges), CORS, the access log, shutdown, health/readiness/metrics (ops)
and the OpenAPI document."""
