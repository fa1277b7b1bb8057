/*
 * A minimal libtirpc RPC server that authenticates with libtirpc's own RPCSEC_GSS v1 acceptor
 * (svcauth_gss), for rpclatch's interop tests (tests/gss/test_interop_libtirpc.py builds it with
 * gcc into a temporary directory and runs it; it is test support, not part of the package).
 *
 *   tirpc_gss_server SERVICE@HOST PROG VERS [BUFSIZE]
 *
 * Serves program PROG version VERS on one TCP socket bound to 127.0.0.1 on a port the kernel
 * picks; prints "PORT <n>" on stdout once it accepts connections (nothing is registered with
 * rpcbind). BUFSIZE is svc_vc_create's send and receive buffer size (0 or absent: libtirpc's
 * default). Procedures, the same as rpclatch's test program (rpclatch/rpc/testprog.py):
 *
 *   void     NULL(void)     = 0;
 *   opaque<> ECHO(opaque<>) = 1;    the same bytes back (at most ECHO_MAX)
 *
 * Calls with any flavor other than RPCSEC_GSS are refused with AUTH_TOOWEAK. Every dispatched
 * call logs one line on stderr:
 *
 *   CALL proc=<p> cred_svc=<service in this call's credential> ctx_svc=<service libtirpc
 *        applies to the context> principal=<initiator> len=<echo bytes or -1>
 *   DESTROY proc=0 cred_svc=<service in the DESTROY credential>
 *
 * Services are RFC 2203's numbers (1 none, 2 integrity, 3 privacy). ctx_svc comes from
 * rpc_gss_getcred(): the service svcauth_gss recorded for the context. The acceptor credential is
 * the keytab entry for SERVICE@HOST (KRB5_KTNAME in the environment), set with
 * svcauth_gss_set_svc_name().
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <gssapi/gssapi.h>
#include <rpc/rpc.h>
#include <rpc/auth_gss.h>
#include <rpc/rpcsec_gss.h>
#include <rpc/svc_auth.h>
#include <rpc/svc_auth_gss.h>

#define ECHO_MAX (1u << 20)

static bool_t xdr_echo(XDR *xdrs, void *p)
{
	gss_buffer_desc *buf = p;
	u_int len = (u_int)buf->length;
	bool_t ok = xdr_bytes(xdrs, (char **)&buf->value, &len, ECHO_MAX);
	buf->length = len;
	return ok;
}

static void log_call(struct svc_req *rq, long len)
{
	rpc_gss_rawcred_t *raw = NULL;
	const struct rpc_gss_cred *gc = rq->rq_clntcred;
	gss_buffer_desc principal = {0, NULL};
	OM_uint32 minor;
	int ctx_svc = -1;

	if (rpc_gss_getcred(rq, &raw, NULL, NULL) && raw != NULL)
		ctx_svc = (int)raw->service;
	/* rq_clntname: the initiator's gss_name_t once the context is established */
	if (rq->rq_clntname != NULL)
		gss_display_name(&minor, (gss_name_t)rq->rq_clntname, &principal, NULL);
	fprintf(stderr, "CALL proc=%u cred_svc=%d ctx_svc=%d principal=%.*s len=%ld\n",
		(unsigned)rq->rq_proc, gc != NULL ? (int)gc->gc_svc : -1, ctx_svc,
		principal.value != NULL ? (int)principal.length : 1,
		principal.value != NULL ? (char *)principal.value : "-", len);
	fflush(stderr);
	gss_release_buffer(&minor, &principal);
}

static bool_t xdr_nothing(XDR *xdrs, void *p)
{
	(void)xdrs;
	(void)p;
	return TRUE;
}

static void dispatch(struct svc_req *rq, SVCXPRT *xprt)
{
	gss_buffer_desc arg = {0, NULL};

	if (rq->rq_cred.oa_flavor != RPCSEC_GSS) {
		fprintf(stderr, "REFUSED flavor=%d proc=%u\n", (int)rq->rq_cred.oa_flavor,
			(unsigned)rq->rq_proc);
		fflush(stderr);
		svcerr_weakauth(xprt);
		return;
	}
	if (((const struct rpc_gss_cred *)rq->rq_clntcred)->gc_proc == RPCSEC_GSS_DESTROY) {
		/* svcauth_gss has already freed the context (and the name rq_clntname points to)
		 * and dispatches the DESTROY call to NULLPROC for the reply. */
		fprintf(stderr, "DESTROY proc=%u cred_svc=%d\n", (unsigned)rq->rq_proc,
			(int)((const struct rpc_gss_cred *)rq->rq_clntcred)->gc_svc);
		fflush(stderr);
		if (!svc_sendreply(xprt, (xdrproc_t)xdr_nothing, NULL))
			fprintf(stderr, "ERROR sendreply DESTROY\n");
		return;
	}
	switch (rq->rq_proc) {
	case 0:
		log_call(rq, -1);
		if (!svc_sendreply(xprt, (xdrproc_t)xdr_nothing, NULL))
			fprintf(stderr, "ERROR sendreply NULL\n");
		return;
	case 1:
		if (!svc_getargs(xprt, (xdrproc_t)xdr_echo, (caddr_t)&arg)) {
			fprintf(stderr, "GARBAGE proc=1\n");
			fflush(stderr);
			svcerr_decode(xprt);
			return;
		}
		log_call(rq, (long)arg.length);
		if (!svc_sendreply(xprt, (xdrproc_t)xdr_echo, (caddr_t)&arg))
			fprintf(stderr, "ERROR sendreply ECHO\n");
		svc_freeargs(xprt, (xdrproc_t)xdr_echo, (caddr_t)&arg);
		return;
	default:
		svcerr_noproc(xprt);
	}
}

int main(int argc, char **argv)
{
	OM_uint32 major, minor;
	gss_buffer_desc namebuf;
	gss_name_t name;
	struct sockaddr_in sin;
	socklen_t slen = sizeof(sin);
	SVCXPRT *xprt;
	unsigned long prog, vers;
	u_int bufsize;
	int fd;

	if (argc != 4 && argc != 5) {
		fprintf(stderr, "usage: %s SERVICE@HOST PROG VERS [BUFSIZE]\n", argv[0]);
		return 2;
	}
	prog = strtoul(argv[2], NULL, 0);
	vers = strtoul(argv[3], NULL, 0);
	bufsize = argc == 5 ? (u_int)strtoul(argv[4], NULL, 0) : 0;

	namebuf.value = argv[1];
	namebuf.length = strlen(argv[1]);
	major = gss_import_name(&minor, &namebuf, GSS_C_NT_HOSTBASED_SERVICE, &name);
	if (major != GSS_S_COMPLETE) {
		fprintf(stderr, "gss_import_name(%s) failed: %u/%u\n", argv[1], major, minor);
		return 1;
	}
	if (!svcauth_gss_set_svc_name(name)) {
		fprintf(stderr, "svcauth_gss_set_svc_name failed\n");
		return 1;
	}
	gss_release_name(&minor, &name);

	fd = socket(AF_INET, SOCK_STREAM, 0);
	if (fd < 0) {
		perror("socket");
		return 1;
	}
	memset(&sin, 0, sizeof(sin));
	sin.sin_family = AF_INET;
	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (bind(fd, (struct sockaddr *)&sin, sizeof(sin)) < 0 || listen(fd, 16) < 0 ||
	    getsockname(fd, (struct sockaddr *)&sin, &slen) < 0) {
		perror("bind/listen");
		return 1;
	}
	xprt = svc_vc_create(fd, bufsize, bufsize);
	if (xprt == NULL) {
		fprintf(stderr, "svc_vc_create failed\n");
		return 1;
	}
	/* protocol 0: do not register with rpcbind */
	if (!svc_register(xprt, prog, vers, dispatch, 0)) {
		fprintf(stderr, "svc_register failed\n");
		return 1;
	}
	fprintf(stderr, "SERVING %s prog=%lu vers=%lu bufsize=%u\n", argv[1], prog, vers, bufsize);
	fflush(stderr);
	printf("PORT %u\n", (unsigned)ntohs(sin.sin_port));
	fflush(stdout);
	svc_run();
	fprintf(stderr, "svc_run returned\n");
	return 1;
}
