/* farmgatectl status / server / farm / health: the client side of farmgated's control socket
 * (docs/control.md). Linked into farmgatectl only. */
#ifndef FG_CTLCLIENT_H
#define FG_CTLCLIENT_H

#define CTL_DEFAULT_SOCKET "/run/farmgated.sock"

/* The control commands' part of farmgatectl's usage text. */
#define CTL_USAGE                                                                                  \
	"control commands (a running farmgated, through its control socket):\n"                    \
	"  status [FARM]                     farms, servers, state, health, counters\n"            \
	"  server FARM SERVER available|drain|stop-graceful|stop-immediate\n"                      \
	"                                    set a server's state (ARR's Available,\n"             \
	"                                    DisallowNewConnections, UnavailableGracefully,\n"     \
	"                                    UnavailableImmediately)\n"                            \
	"  farm FARM online|offline          take a farm online or offline\n"                      \
	"  farm FARM verify                  probe every server of the farm now\n"                 \
	"  farm FARM reset [--server SERVER] set the farm's (or one server's) counters to zero\n"  \
	"  health FARM SERVER healthy|unhealthy\n"                                                 \
	"                                    mark a server healthy or unhealthy\n"                 \
	"  pin TOKEN                         give a token configured without pinFile its PIN\n"    \
	"                                    (read from $FARMGATE_PIN, else from the terminal;\n"  \
	"                                    farmgated keeps it in memory only)\n"                 \
	"  SERVER is address:httpPort, or a bare address when only one server of the farm has "    \
	"it\n"                                                                                     \
	"control options:\n"                                                                       \
	"  --socket PATH      the control socket (default $FARMGATE_SOCKET, "                      \
	"else " CTL_DEFAULT_SOCKET ")\n"                                                           \
	"  --timeout SECONDS  how long to wait for the answer (default 30; 60 for verify)\n"       \
	"  --json             print the daemon's JSON answer as it is\n"

/* Runs one control command: argv[0] is "status", "server", "farm" or "health", the rest
 * its arguments and options. Returns the exit status: 0 ok, 1 the daemon refused or is not
 * running, 2 usage. */
int ctl_main(int argc, char **argv);

#endif
