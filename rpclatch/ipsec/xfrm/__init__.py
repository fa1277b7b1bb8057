"""Linux kernel datapath for the latching engine: xfrm_user netlink (:mod:`.netlink`) and the
:class:`~rpclatch.ipsec.xfrm.backend.XfrmBackend` (approach 2: per-5-tuple policies pinned by reqid)."""
