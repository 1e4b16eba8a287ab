// Command attacker is the unprivileged side of the issue 11 attack tests
// (test/attack_test.go). The test runs it as an unprivileged uid
// (SysProcAttr.Credential) and hands it two directories it owns, by fd, so
// that it needs no path to them (the test's directories are 0700 root):
//
//	fd 3: /etc/svc, a directory of the booted etc owned by the user
//	fd 4: a stash directory of the user's outside /etc, on the same
//	      filesystem, holding what it moves into /etc and back
//
// For -duration it loops, each round:
//   - exchanging svc/d (a directory) with svc/dl (a symlink to a root-only
//     directory outside /etc holding a secret and a setuid-root binary:
//     whoever follows svc/d while it is the symlink reads them);
//   - exchanging svc/x with stash/suidlink (a hard link to that setuid
//     binary) and svc/y with stash/suidalone (a root-owned setuid file
//     with the user's content, whose other name is gone): planted
//     privileged files appear in /etc and disappear;
//   - making and removing a hard link of its own file, and exchanging
//     svc/r1.conf with svc/r2.conf.
//
// The kernel lets an unprivileged user make none of the stash's links
// itself (fs.protected_hardlinks=1 refuses links to files it does not own,
// and the test must not change that global setting): the test creates them
// as root, standing for a host with protected_hardlinks=0 or a link made
// before a package update replaced the binary. Everything else is done
// here, as the user.
//
// At the end every exchange is undone, so /etc is back in its initial
// state (the test's oracle, ostree's own merge, starts from it), and the
// counts are printed as JSON on stdout.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

type counts struct {
	Swaps  int            `json:"swaps"`  // d <-> symlink exchanges
	Plants int            `json:"plants"` // setuid files moved into /etc or out
	Links  int            `json:"links"`  // own hard links made and removed
	Rename int            `json:"renames"`
	Errors map[string]int `json:"errors,omitempty"`
	UID    int            `json:"uid"`
}

const svc, stash = 3, 4

func main() {
	dur := flag.Duration("duration", 20*time.Second, "how long to attack")
	flag.Parse()
	c := counts{Errors: map[string]int{}, UID: os.Geteuid()}
	if c.UID == 0 {
		fmt.Fprintln(os.Stderr, "attacker: refusing to run as root")
		os.Exit(2)
	}
	odd := map[string]bool{}
	xchg := func(what string, d1 int, n1 string, d2 int, n2 string) bool {
		if err := unix.Renameat2(d1, n1, d2, n2, unix.RENAME_EXCHANGE); err != nil {
			c.Errors[what+": "+err.Error()]++
			return false
		}
		odd[what] = !odd[what]
		return true
	}
	end := time.Now().Add(*dur)
	for round := 0; time.Now().Before(end); round++ {
		// Odd rounds flip as fast as the kernel allows, even rounds hold
		// each state for up to a millisecond: a reader needing several
		// steps in one state (list d, stat d/secret, open it) wins only
		// in the held states.
		for i := 0; i < 20; i++ {
			if xchg("swap", svc, "d", svc, "dl") {
				c.Swaps++
			}
			if round%2 == 0 {
				time.Sleep(time.Duration(rand.IntN(1000)) * time.Microsecond)
			}
		}
		if xchg("plant-link", svc, "x", stash, "suidlink") {
			c.Plants++
		}
		if xchg("plant-alone", svc, "y", stash, "suidalone") {
			c.Plants++
		}
		if round%2 == 0 {
			time.Sleep(time.Duration(rand.IntN(1000)) * time.Microsecond)
		}
		if err := unix.Linkat(svc, "own.conf", svc, "own.link", 0); err != nil {
			c.Errors["link: "+err.Error()]++
		} else if err := unix.Unlinkat(svc, "own.link", 0); err != nil {
			c.Errors["unlink: "+err.Error()]++
		} else {
			c.Links++
		}
		if xchg("rename", svc, "r1.conf", svc, "r2.conf") {
			c.Rename++
		}
	}
	// Undo: /etc back to its initial state.
	undo := map[string][4]any{
		"swap":        {svc, "d", svc, "dl"},
		"plant-link":  {svc, "x", stash, "suidlink"},
		"plant-alone": {svc, "y", stash, "suidalone"},
		"rename":      {svc, "r1.conf", svc, "r2.conf"},
	}
	for what, a := range undo {
		if odd[what] && !xchg(what, a[0].(int), a[1].(string), a[2].(int), a[3].(string)) {
			fmt.Fprintf(os.Stderr, "attacker: cannot undo %s\n", what)
			os.Exit(1)
		}
	}
	if err := json.NewEncoder(os.Stdout).Encode(c); err != nil {
		os.Exit(1)
	}
}
