"""The HTTP service: ``app.create_app`` mounts the intake route, the flush trigger and the
operator routes, all guarded (except intake, which is signed) by ``auth.OperatorAuthorizer``."""
