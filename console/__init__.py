"""The web console: tenant dashboards and operator views behind Keycloak sign-in (port 8085)."""
