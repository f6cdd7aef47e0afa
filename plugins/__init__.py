"""nocosup's built-in plugins: the supervisor and worker roles and the starter app."""
