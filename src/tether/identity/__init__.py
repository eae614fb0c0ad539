"""Who is calling: operators (bearer tokens) now; agents (keys, DPoP) later."""
