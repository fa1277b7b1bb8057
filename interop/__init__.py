"""Interop harnesses against real peers: the Linux kernel NFS server in User-Mode Linux.

See :mod:`interop.uml` (:class:`~interop.uml.LinuxNfsdGuest`) and :mod:`interop.runner`.
"""
