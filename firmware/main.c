/* farmgated: the daemon's entry point: options, configuration, signals, the event loop. */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include "buildopts.h"
#include "fgversion.h"
#include "cfg.h"
#include "control.h"
#include "ev.h"
#include "log.h"
#include "proxy.h"
#include "tls.h"

#define STOP_GRACE_MS	10000
#define STATS_PERIOD_MS 300000 /* token signature counters in the log */

struct daemon {
	struct ev_loop loop;
	struct ev_fd sig;
	struct ev_timer stop_timer;
	struct ev_timer stats_timer;
	const char *cfg_path;
};

static void usage(FILE *f)
{
	fprintf(f, "usage: farmgated [-t | -S] -c FILE\n"
		   "       farmgated -V\n"
		   "  -c FILE  configuration file (JSON, ARR attribute names)\n"
		   "  -t       check the configuration and exit (0 = valid)\n"
		   "  -S       check the file (no token is opened), then print its system\n"
		   "           section as sh assignments (FG_HOSTNAME='...', defaults filled in)\n"
		   "  -V       print the version and the build options\n"
		   "Signals: SIGHUP reloads the configuration, SIGTERM/SIGINT stop gracefully.\n");
}

static struct daemon *the_daemon;

/* SIGHUP, and the control socket's "reload": the file, validated, swapped
 * in; on any failure the running configuration stays. */
static int reload_err(char *err, size_t errlen)
{
	struct daemon *d = the_daemon;
	struct config *cfg = cfg_load_file(d->cfg_path, err, errlen);

	if (!cfg || tls_prepare(cfg, err, errlen) == -1) {
		LOGE("reload failed: %s; keeping the running configuration", err);
		if (cfg)
			cfg_put(cfg);
		return -1;
	}
	if (proxy_reload(cfg, err, errlen) == -1) {
		LOGE("reload failed: %s; keeping the running configuration", err);
		return -1;
	}
	control_listen(&d->loop, proxy_config()->control_socket);
	LOGI("configuration reloaded");
	return 0;
}

static void reload(struct daemon *d)
{
	char err[1024];

	(void)d;
	reload_err(err, sizeof(err));
}

static void stop_timer_cb(struct ev_loop *loop, struct ev_timer *t)
{
	(void)t;
	LOGW("connections still open after %d s: closing them", STOP_GRACE_MS / 1000);
	loop->stop = 1;
}

static void stats_timer_cb(struct ev_loop *loop, struct ev_timer *t)
{
	const struct config *cfg = proxy_config();
	unsigned int i;

	for (i = 0; cfg && i < cfg->nfarms; i++)
		if (cfg->farms[i].tls && cfg->farms[i].tls->token) {
			tls_log_stats(cfg);
			break;
		}
	ev_timer_set(loop, t, loop->now_ms + STATS_PERIOD_MS);
}

static void signal_cb(struct ev_loop *loop, struct ev_fd *w, uint32_t events)
{
	struct daemon *d = (struct daemon *)((char *)w - offsetof(struct daemon, sig));
	struct signalfd_siginfo si;

	(void)events;
	while (read(w->fd, &si, sizeof(si)) == sizeof(si)) {
		switch (si.ssi_signo) {
		case SIGHUP:
			reload(d);
			break;
		case SIGTERM:
		case SIGINT: {
			unsigned int n = proxy_shutdown();

			LOGI("stopping (signal %u): %u connection(s) finishing", si.ssi_signo, n);
			if (n)
				ev_timer_set(loop, &d->stop_timer, loop->now_ms + STOP_GRACE_MS);
			break;
		}
		}
	}
}

/* Lets one process hold as many connections as the hard limit allows. */
static void raise_nofile(void)
{
	struct rlimit rl;

	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
	}
}

int main(int argc, char **argv)
{
	static struct daemon d;

	the_daemon = &d;
	char err[1024];
	struct config *cfg;
	sigset_t set;
	int opt, check = 0, print_system = 0;

	while ((opt = getopt(argc, argv, "c:tSVh")) != -1) {
		switch (opt) {
		case 'c':
			d.cfg_path = optarg;
			break;
		case 't':
			check = 1;
			break;
		case 'S':
			print_system = 1;
			break;
		case 'V':
			printf("farmgated %s\n%s", FG_VERSION, FG_BUILD_OPTIONS);
			return 0;
		case 'h':
			usage(stdout);
			return 0;
		default:
			usage(stderr);
			return 2;
		}
	}
	if (!d.cfg_path || optind != argc) {
		usage(stderr);
		return 2;
	}

	/* before any thread exists (token signers): signals reach only the
	 * loop's signalfd */
	sigemptyset(&set);
	sigaddset(&set, SIGHUP);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	sigprocmask(SIG_BLOCK, &set, NULL);

	cfg = cfg_load_file(d.cfg_path, err, sizeof(err));
	if (cfg && print_system) {
		/* for the init scripts, before the network and the tokens are
		 * up: the file is checked, but no token is opened */
		int rc = cfg_system_shell(cfg, stdout, err, sizeof(err)) == -1 ? 1 : 0;

		if (rc)
			fprintf(stderr, "farmgated: %s\n", err);
		else if (fflush(stdout) == EOF)
			rc = 1;
		cfg_put(cfg);
		return rc;
	}
	if (cfg && tls_prepare(cfg, err, sizeof(err)) == -1) {
		cfg_put(cfg);
		cfg = NULL;
	}
	if (!cfg) {
		fprintf(stderr, "farmgated: %s\n", err);
		tls_shutdown();
		return 1;
	}
	if (check) {
		printf("%s: configuration OK\n", d.cfg_path);
		cfg_put(cfg);
		tls_shutdown();
		return 0;
	}
	log_configure(cfg->log.access, cfg->log.error, cfg->log.debug);
	raise_nofile();
	signal(SIGPIPE, SIG_IGN);

	if (ev_init(&d.loop, CONFIG_MAX_EVENTS) == -1) {
		LOGE("event loop: %s", strerror(errno));
		cfg_put(cfg);
		return 1;
	}
	d.sig.fd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
	d.sig.cb = signal_cb;
	if (d.sig.fd == -1 || ev_fd_add(&d.loop, &d.sig, EPOLLIN) == -1) {
		LOGE("signalfd: %s", strerror(errno));
		cfg_put(cfg);
		return 1;
	}
	ev_timer_init(&d.stop_timer, stop_timer_cb);
	ev_timer_init(&d.stats_timer, stats_timer_cb);
	ev_timer_set(&d.loop, &d.stats_timer, d.loop.now_ms + STATS_PERIOD_MS);
	tls_init(&d.loop, proxy_token_state);

	if (proxy_start(&d.loop, cfg, err, sizeof(err)) == -1) {
		LOGE("%s", err);
		return 1;
	}
	control_listen(&d.loop, proxy_config()->control_socket);
	control_set_reload(reload_err);
	LOGI("farmgated %s started (pid %d)", FG_VERSION, (int)getpid());
	ev_run(&d.loop);
	control_close();
	tls_log_stats(proxy_config());
	proxy_free();
	tls_shutdown();
	ev_timer_del(&d.loop, &d.stats_timer);
	ev_timer_del(&d.loop, &d.stop_timer);
	ev_fd_close(&d.loop, &d.sig);
	ev_free(&d.loop);
	LOGI("stopped");
	return 0;
}
