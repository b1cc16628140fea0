"""Test-time search: strategy specs, answer extraction, results."""
