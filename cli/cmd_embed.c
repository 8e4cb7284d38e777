/* cmd_embed.c - `umgdb embed`: encode images or texts, print JSON lines. */
#include "commands.h"

#include <stdio.h>

int cmd_embed(int argc, char **argv)
{
    /* Placeholder until the encoder lands (issue 2); reports honestly. */
    fprintf(stderr, "umgdb embed: the encoder is not built yet\n");
    return 1;
}
