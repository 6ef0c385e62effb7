"""wire-api: the operators' control API (Falcon under gunicorn) and the mpc_operator client."""
