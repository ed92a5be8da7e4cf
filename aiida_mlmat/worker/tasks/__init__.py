"""Worker tasks: each takes the validated input dictionary and the working directory and returns a results dict."""
