"""The web console for people (board officers, the CA operator): OpenID Connect login,
server-side sessions, and pages that call the plain functions of ``ca``."""
