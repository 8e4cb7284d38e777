/* commands.h - subcommands of the umgdb binary.  Each takes the arguments after
 * the subcommand name (argv[0] is the subcommand) and returns the process exit
 * code: 0 success, 1 runtime failure, 2 bad usage. */
#ifndef UMG_CLI_COMMANDS_H
#define UMG_CLI_COMMANDS_H

int cmd_embed(int argc, char **argv);
int cmd_serve(int argc, char **argv);
int cmd_ingest(int argc, char **argv);
int cmd_query(int argc, char **argv);
int cmd_stats(int argc, char **argv);
int cmd_get(int argc, char **argv);
int cmd_delete(int argc, char **argv);

#endif
