"""Build helpers: the PEP 517 backend (``backend``) and the mypyc build of the real path
(``mypyc_real``).  Not part of the installed package."""
