"""The director host itself: the sysctls its services need (``needs`` pure, ``sysctl`` I/O)."""
