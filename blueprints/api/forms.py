"""The API takes no HTML forms: requests are multipart or query strings, answered in JSON."""
