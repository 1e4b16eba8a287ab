package ostree

import (
	"crypto/sha256"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

func csum(s string) Checksum { return sha256.Sum256([]byte(s)) }

func dep(os, c string, serial int) *Deployment {
	return &Deployment{OSName: os, Checksum: csum(c), Serial: serial}
}

func names(ds []*Deployment) []string {
	var out []string
	for _, d := range ds {
		out = append(out, d.String())
	}
	return out
}

// stagedSysroot builds the in-memory model LoadSysroot would return: staged
// first, then the bootloader entries.
func stagedSysroot(staged *Deployment, merge *Deployment, booted *Deployment, rest ...*Deployment) *Sysroot {
	s := &Sysroot{Booted: booted}
	if staged != nil {
		staged.Staged = true
		s.Staged = staged
		s.StagedState = &StagedState{Target: staged.ID()}
		if merge != nil {
			id := merge.ID()
			s.StagedState.Merge = &id
			s.Merge = merge
		}
		s.Deployments = append(s.Deployments, staged)
	}
	if booted != nil {
		booted.Booted = true
	}
	s.Deployments = append(s.Deployments, rest...)
	for i, d := range s.Deployments {
		d.Index = i
	}
	return s
}

func TestPredictDeployments(t *testing.T) {
	booted := dep("os", "booted", 0)
	rollback := dep("os", "rollback", 0)
	pinned := dep("os", "pinned", 0)
	pinned.Pinned = true
	other := dep("other", "o", 0)
	pending := dep("os", "pending", 0) // a non-staged deployment above the booted one

	for _, tc := range []struct {
		name    string
		s       *Sysroot
		opts    PredictOptions
		want    []string
		wantErr error
	}{
		{"drop rollback", stagedSysroot(dep("os", "new", 0), booted, booted, booted, rollback),
			PredictOptions{}, []string{"os " + csum("new").String() + ".0", booted.String()}, nil},
		{"pinned and other stateroot kept in order", stagedSysroot(dep("os", "new", 0), booted, booted, booted, rollback, pinned, other),
			PredictOptions{}, []string{"os " + csum("new").String() + ".0", booted.String(), pinned.String(), other.String()}, nil},
		{"pending dropped, merge kept", stagedSysroot(dep("os", "new", 0), rollback, booted, pending, booted, rollback),
			PredictOptions{}, []string{"os " + csum("new").String() + ".0", booted.String(), rollback.String()}, nil},
		{"no merge key: only booted", stagedSysroot(dep("os", "new", 0), nil, booted, pending, booted, rollback),
			PredictOptions{}, []string{"os " + csum("new").String() + ".0", booted.String()}, nil},
		{"staged to another stateroot keeps this one", stagedSysroot(dep("other", "new", 0), other, booted, booted, rollback, other),
			PredictOptions{}, []string{"other " + csum("new").String() + ".0", booted.String(), rollback.String(), other.String()}, nil},
		{"nothing staged", stagedSysroot(nil, nil, booted, booted, rollback),
			PredictOptions{}, []string{booted.String(), rollback.String()}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := PredictDeployments(tc.s, tc.opts)
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("err = %v, want %v", err, tc.wantErr)
			}
			if !slices.Equal(names(got), tc.want) {
				t.Errorf("got %q\nwant %q", names(got), tc.want)
			}
			for i, d := range got {
				if d.Index != i || d.Staged {
					t.Errorf("%s: index %d staged %v", d, d.Index, d.Staged)
				}
			}
		})
	}

	// Takeover: the live state lost its merge key; the original restores
	// ostree's retention.
	s := stagedSysroot(dep("os", "new", 0), rollback, booted, pending, booted, rollback)
	orig := *s.StagedState
	s.StagedState.Merge = nil
	got, err := PredictDeployments(s, PredictOptions{State: &orig})
	if err != nil || len(got) != 3 || !got[2].Same(rollback) {
		t.Errorf("with the original state: %q, %v", names(got), err)
	}
	other2 := orig
	other2.Target = dep("os", "elsewhere", 0).ID()
	if _, err := PredictDeployments(s, PredictOptions{State: &other2}); !errors.Is(err, ErrCorrupt) {
		t.Errorf("state for another target: %v", err)
	}

	// Locked: nothing is finalized.
	s = stagedSysroot(dep("os", "new", 0), booted, booted, booted, rollback)
	s.StagedLocked = true
	if got, _ := PredictDeployments(s, PredictOptions{}); !slices.Equal(names(got), []string{booted.String(), rollback.String()}) {
		t.Errorf("locked: %q", names(got))
	}
	if got, _ := PredictDeployments(s, PredictOptions{IgnoreLock: true}); len(got) != 2 || !got[0].Same(s.Staged) {
		t.Errorf("locked, ignored: %q", names(got))
	}

	// A merge deployment that is not deployed: ostree fails, so do we.
	s = stagedSysroot(dep("os", "new", 0), booted, booted, rollback)
	s.Deployments = s.Deployments[:1]
	if _, err := PredictDeployments(s, PredictOptions{}); !errors.Is(err, ErrMergeNotFound) || !errors.Is(err, ErrNotFound) {
		t.Errorf("missing merge: %v", err)
	}
	// Inputs are not modified.
	if !s.Deployments[0].Staged {
		t.Error("PredictDeployments modified the sysroot's deployments")
	}
}

func TestDeploymentRefSurvives(t *testing.T) {
	cur := [][2]int{{0, 1}}
	for name, want := range map[string]bool{
		"testos/main":    true,
		"ostree/0/1/0":   false, // overwritten
		"ostree/0/1/2":   false,
		"ostree/0/1/3":   true, // stale beyond the list: survives as ostree leaves it
		"ostree/0/1/01":  true, // not a name ostree writes
		"ostree/0/1/x/y": true,
		"ostree/0/0/0":   false, // cleaned prefixes
		"ostree/1/0/7":   false,
		"ostree/1/1":     false,
		"ostree/0/10":    true, // not below a deployment-ref prefix
		"ostree/2/0/0":   true,
		"ostreex/0/0/0":  true,
	} {
		if got := deploymentRefSurvives(name, cur, 3); got != want {
			t.Errorf("%s: %v, want %v", name, got, want)
		}
	}
}

func writeRef(t *testing.T, repo, rel, c string) {
	t.Helper()
	p := filepath.Join(repo, rel)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(c+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestPostFinalizeRoots(t *testing.T) {
	repo := t.TempDir()
	for _, d := range []string{"refs/heads", "refs/remotes", "objects"} {
		if err := os.MkdirAll(filepath.Join(repo, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	booted, rollback, staged := dep("os", "booted", 0), dep("os", "rollback", 0), dep("os", "new", 0)
	writeRef(t, repo, "refs/heads/os/main", csum("new").String())
	writeRef(t, repo, "refs/heads/keep", csum("kept").String())
	writeRef(t, repo, "refs/remotes/origin/main", csum("remote").String())
	writeRef(t, repo, "refs/mirrors/org.example/mirrored", csum("mirror").String())
	writeRef(t, repo, "refs/remotes/origin/ostree/0/0/0", csum("remote-lookalike").String())
	writeRef(t, repo, "refs/heads/ostree/0/0/0", csum("booted").String())
	writeRef(t, repo, "refs/heads/ostree/0/0/1", csum("rollback").String())
	writeRef(t, repo, "refs/heads/ostree/1/0/5", csum("stray").String())

	want := func(cs ...string) []ObjectName {
		var out []ObjectName
		for _, c := range cs {
			out = append(out, ObjectName{Checksum: csum(c), Type: ObjCommit})
		}
		slices.SortFunc(out, CompareObjectNames)
		return out
	}

	s := stagedSysroot(staged, booted, booted, booted, rollback)
	s.Repo = &Repo{Path: repo}
	ds, err := PredictDeployments(s, PredictOptions{})
	if err != nil {
		t.Fatal(err)
	}
	got, err := PostFinalizeRoots(s, ds)
	if err != nil {
		t.Fatal(err)
	}
	// The old deployment refs go (rollback is no root any more); the stray
	// ref under a candidate new prefix is kept (less deletion).
	if w := want("new", "booted", "kept", "remote", "mirror", "remote-lookalike", "stray"); !slices.Equal(got, w) {
		t.Errorf("staged roots:\n%v\nwant\n%v", got, w)
	}

	// Nothing staged: cleanup at the current (0,0) regenerates ostree/0/0/*
	// and deletes the other prefixes.
	s = stagedSysroot(nil, nil, booted, booted, rollback)
	s.Repo = &Repo{Path: repo}
	got, err = PostFinalizeRoots(s, s.Deployments)
	if err != nil {
		t.Fatal(err)
	}
	if w := want("new", "booted", "rollback", "kept", "remote", "mirror", "remote-lookalike"); !slices.Equal(got, w) {
		t.Errorf("current roots:\n%v\nwant\n%v", got, w)
	}

	if _, err := PostFinalizeRoots(&Sysroot{Repo: &Repo{Path: filepath.Join(repo, "missing")}}, nil); err == nil {
		t.Error("no error for a repository without refs")
	}
}
