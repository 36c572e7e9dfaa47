package estate

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"regexp"
	"strconv"
	"sync"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"flightctl.dr/internal/kube"
	"flightctl.dr/internal/procstat"
	"flightctl.dr/internal/restore"
)

// Where a Kubernetes restore keeps its journal (module option journal_location).
const (
	// JournalAuto keeps it in the cluster when the restore runs there (the pod's service
	// account: a Job or CronJob, whose file system is lost with its pod), else in the
	// state directory.
	JournalAuto = "auto"
	// JournalStateDir keeps it in the state directory (a run from a controller).
	JournalStateDir = "state_dir"
	// JournalCluster keeps it in the Secret KubeJournalSecret of the release namespace.
	JournalCluster = "cluster"
)

// The journal in the cluster. It is a Secret, not a ConfigMap: the journal records the
// live Secrets a restore replaces (PKI keys, the encryption key, the Helm release) so that a
// rollback can put them back, and a ConfigMap would show them to everyone who may read
// ConfigMaps. The Lease keeps two restores from using it at once.
const (
	KubeJournalSecret = "flightctl-dr-restore-journal"
	KubeJournalLease  = "flightctl-dr-restore"
	// kubeJournalKey holds the journal's JSON, gzipped (a Secret holds at most 1 MiB).
	kubeJournalKey = "journal.json.gz"
	// kubeJournalMax leaves room in a Secret's 1 MiB for its metadata.
	kubeJournalMax = 1000 << 10
	// DefaultJournalLease is how long a lock not renewed stays valid; its holder renews
	// it three times as often.
	DefaultJournalLease = 30 * time.Second
	// staleLockSkew: a Lease not renewed for its duration and this long, by this
	// machine's clock, is taken over at once; one renewed more recently is watched for a
	// whole duration first (the clocks of two machines may disagree).
	staleLockSkew = 2 * time.Minute
)

// kubeJournalLabels mark the journal's Secret and Lease.
var kubeJournalLabels = map[string]string{"app.kubernetes.io/managed-by": "flightctl.dr", "flightctl.dr/restore-journal": "true"}

// SecretJournal is a restore journal kept in a Secret of one namespace, locked with a
// Lease that its holder renews while the restore runs: a restore killed with SIGKILL stops
// renewing it, and the next run takes it over once it has expired. Every write of the
// Secret is conditional on the version this run last read or wrote, so that a run that
// lost the lock cannot overwrite the journal of the run that took it.
type SecretJournal struct {
	Client    *kube.Client
	Namespace string
	// LeaseDuration is how long the lock stays valid without renewal (DefaultJournalLease).
	LeaseDuration time.Duration
	Logger        *slog.Logger

	mu    sync.Mutex
	known bool   // rv was read or written by this run
	rv    string // the journal Secret's resource version; "" when there is none
	lost  error  // set when the lock was taken by another run
}

var _ restore.JournalStore = (*SecretJournal)(nil)

func (s *SecretJournal) String() string {
	return "Secret " + s.Namespace + "/" + KubeJournalSecret
}

func (s *SecretJournal) log() *slog.Logger {
	if s.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return s.Logger
}

func (s *SecretJournal) duration() time.Duration {
	if s.LeaseDuration > 0 {
		return s.LeaseDuration
	}
	return DefaultJournalLease
}

// accessHint is what to do when the API refuses the journal's calls.
func (s *SecretJournal) accessHint(err error) error {
	if apierrors.IsForbidden(err) || apierrors.IsUnauthorized(err) {
		return fmt.Errorf("keep the restore journal in the cluster (%s, Lease %s/%s): %w: grant get, create, update and delete on secrets and on leases.coordination.k8s.io in namespace %s (collection/docs/operations.md lists the restore Role), or set journal_location: state_dir; nothing was stopped or changed",
			s, s.Namespace, KubeJournalLease, err, s.Namespace)
	}
	return fmt.Errorf("restore journal %s: %w", s, err)
}

// holderIdentity names this run in the Lease: the host (a pod's name in the cluster),
// the process and a random part, and where it can be read, the boot and the process's
// start time, so that a later run on the same host can tell whether the holder still
// lives (holderOnThisHost).
func holderIdentity() string {
	host, _ := os.Hostname()
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	id := fmt.Sprintf("%s pid %d (%s)", host, os.Getpid(), hex.EncodeToString(b))
	if boot, start, ok := processStart(os.Getpid()); ok {
		id += fmt.Sprintf(" boot %s start %s", boot, start)
	}
	return id
}

var holderPattern = regexp.MustCompile(`^(.*) pid (\d+) \([0-9a-f]+\) boot (\S+) start (\d+)$`)

// holderOnThisHost says whether the Lease's holder is a process of this host (same host
// name and boot), and if so whether it still runs (the same pid with the same start
// time). A holder elsewhere (another pod, another machine) is judged by its renewals.
func holderOnThisHost(holder string) (local, alive bool) {
	m := holderPattern.FindStringSubmatch(holder)
	if m == nil {
		return false, false
	}
	host, _ := os.Hostname()
	boot, _, ok := processStart(os.Getpid())
	if !ok || m[1] != host || m[3] != boot {
		return false, false
	}
	pid, err := strconv.Atoi(m[2])
	if err != nil {
		return false, false
	}
	_, start, ok := processStart(pid)
	return true, ok && start == m[4]
}

// processStart reads this boot's id and the start time of process pid (clock ticks since
// boot, field 22 of /proc/<pid>/stat); ok is false where /proc cannot tell.
func processStart(pid int) (boot, start string, ok bool) {
	boot, err := procstat.BootID()
	if err != nil {
		return "", "", false
	}
	st, err := procstat.Read(pid)
	if err != nil {
		return boot, "", false
	}
	return boot, strconv.FormatUint(st.StartTicks, 10), true
}

// Lock takes the Lease. In check mode it takes nothing: a check writes nothing.
func (s *SecretJournal) Lock(ctx context.Context, checkMode bool) (func(), error) {
	if checkMode {
		return func() {}, nil
	}
	me := holderIdentity()
	l, err := s.acquire(ctx, me)
	if err != nil {
		return nil, err
	}
	stop := make(chan struct{})
	done := make(chan struct{})
	go s.renew(l, stop, done)
	var once sync.Once
	return func() {
		once.Do(func() {
			close(stop)
			<-done
			s.release(me)
		})
	}, nil
}

func (s *SecretJournal) newLease(me string, transitions int32) *coordinationv1.Lease {
	now := metav1.NewMicroTime(time.Now())
	secs := int32(s.duration() / time.Second)
	if secs < 1 {
		secs = 1
	}
	return &coordinationv1.Lease{
		ObjectMeta: metav1.ObjectMeta{Name: KubeJournalLease, Namespace: s.Namespace, Labels: kubeJournalLabels},
		Spec: coordinationv1.LeaseSpec{HolderIdentity: &me, LeaseDurationSeconds: &secs,
			AcquireTime: &now, RenewTime: &now, LeaseTransitions: &transitions},
	}
}

// acquire creates the Lease, takes a free one, or takes over one its holder stopped
// renewing; a Lease renewed while this run watches it belongs to a live restore, and
// this run is refused.
func (s *SecretJournal) acquire(ctx context.Context, me string) (*coordinationv1.Lease, error) {
	var seenRV string
	var seenAt time.Time
	for {
		l, err := s.Client.GetLease(ctx, s.Namespace, KubeJournalLease)
		if apierrors.IsNotFound(err) {
			out, err := s.Client.CreateLease(ctx, s.newLease(me, 0))
			if apierrors.IsAlreadyExists(err) {
				continue
			}
			if err != nil {
				return nil, s.accessHint(err)
			}
			return out, nil
		}
		if err != nil {
			return nil, s.accessHint(err)
		}
		holder := ""
		if l.Spec.HolderIdentity != nil {
			holder = *l.Spec.HolderIdentity
		}
		dur := s.duration()
		if l.Spec.LeaseDurationSeconds != nil && *l.Spec.LeaseDurationSeconds > 0 {
			dur = time.Duration(*l.Spec.LeaseDurationSeconds) * time.Second
		}
		renewed := time.Time{}
		if l.Spec.RenewTime != nil {
			renewed = l.Spec.RenewTime.Time
		}
		now := time.Now()
		take := holder == ""
		local, alive := holderOnThisHost(holder)
		switch {
		case take:
		case local && alive:
			return nil, fmt.Errorf("another restore is running: %s holds the restore lock (Lease %s/%s) and still runs on this host: wait for it to finish, then run this again; nothing was changed",
				holder, s.Namespace, KubeJournalLease)
		case local:
			// A restore of this host that ended without releasing the lock (SIGKILL).
			take = true
		case !renewed.IsZero() && now.Sub(renewed) > dur+staleLockSkew:
			take = true
		case seenRV == "":
			seenRV, seenAt = l.ResourceVersion, now
			s.log().Info("the restore lock is held: waiting to see whether its holder still renews it", "lease", s.Namespace+"/"+KubeJournalLease, "holder", holder, "for", dur)
		case l.ResourceVersion != seenRV:
			return nil, fmt.Errorf("another restore is running: %s holds the restore lock (Lease %s/%s, renewed %s) and keeps renewing it: wait for it to finish, then run this again; nothing was changed",
				holder, s.Namespace, KubeJournalLease, renewed.UTC().Format(time.RFC3339))
		case now.Sub(seenAt) >= dur:
			take = true
		}
		if take {
			tr := int32(0)
			if l.Spec.LeaseTransitions != nil {
				tr = *l.Spec.LeaseTransitions
			}
			nl := s.newLease(me, tr+1)
			nl.ResourceVersion = l.ResourceVersion
			out, err := s.Client.UpdateLease(ctx, nl)
			if apierrors.IsConflict(err) || apierrors.IsNotFound(err) {
				continue
			}
			if err != nil {
				return nil, s.accessHint(err)
			}
			if holder != "" {
				s.log().Warn("took over the restore lock its holder no longer renewed (a restore that was killed)", "lease", s.Namespace+"/"+KubeJournalLease, "previous_holder", holder)
			}
			return out, nil
		}
		wait := dur / 10
		if left := dur - now.Sub(seenAt); left < wait {
			wait = left
		}
		if wait < 50*time.Millisecond {
			wait = 50 * time.Millisecond
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(wait):
		}
	}
}

// renew renews the Lease three times per duration until stop is closed. A renewal the API
// refuses because the Lease changed means another run took it: the journal's next write
// fails.
func (s *SecretJournal) renew(l *coordinationv1.Lease, stop <-chan struct{}, done chan<- struct{}) {
	defer close(done)
	every := s.duration() / 3
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
		}
		ctx, cancel := context.WithTimeout(context.Background(), every)
		nl := l.DeepCopy()
		now := metav1.NewMicroTime(time.Now())
		nl.Spec.RenewTime = &now
		out, err := s.Client.UpdateLease(ctx, nl)
		cancel()
		switch {
		case err == nil:
			s.mu.Lock()
			l = out
			s.mu.Unlock()
		case apierrors.IsConflict(err) || apierrors.IsNotFound(err):
			s.mu.Lock()
			s.lost = fmt.Errorf("another run took the restore lock (Lease %s/%s) while this restore ran (was it stopped for longer than %s?): %w", s.Namespace, KubeJournalLease, s.duration(), err)
			s.mu.Unlock()
			s.log().Error("restore lock lost", "lease", s.Namespace+"/"+KubeJournalLease, "err", err)
			return
		default:
			s.log().Warn("could not renew the restore lock; retrying", "lease", s.Namespace+"/"+KubeJournalLease, "err", err)
		}
	}
}

// release deletes the Lease when this run still holds it.
func (s *SecretJournal) release(me string) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	l, err := s.Client.GetLease(ctx, s.Namespace, KubeJournalLease)
	if err != nil || l.Spec.HolderIdentity == nil || *l.Spec.HolderIdentity != me {
		return
	}
	if err := s.Client.DeleteLeaseIf(ctx, s.Namespace, KubeJournalLease, l.ResourceVersion); err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
		s.log().Warn("could not release the restore lock: the next restore takes it over once it expires", "lease", s.Namespace+"/"+KubeJournalLease, "err", err)
	}
}

// Load reads the journal from the Secret; nil when there is none.
func (s *SecretJournal) Load(ctx context.Context) (*restore.Journal, error) {
	sec, err := s.Client.GetSecret(ctx, s.Namespace, KubeJournalSecret)
	s.mu.Lock()
	defer s.mu.Unlock()
	if apierrors.IsNotFound(err) {
		s.known, s.rv = true, ""
		return nil, nil
	}
	if err != nil {
		return nil, s.accessHint(err)
	}
	s.known, s.rv = true, sec.ResourceVersion
	moveAway := fmt.Sprintf("delete it (kubectl delete secret -n %s %s)", s.Namespace, KubeJournalSecret)
	raw, ok := sec.Data[kubeJournalKey]
	if !ok {
		return nil, fmt.Errorf("restore journal %s is damaged (no key %s): inspect it, then %s to start afresh", s, kubeJournalKey, moveAway)
	}
	zr, err := gzip.NewReader(bytes.NewReader(raw))
	if err != nil {
		return nil, fmt.Errorf("restore journal %s is damaged (%v): inspect it, then %s to start afresh", s, err, moveAway)
	}
	data, err := io.ReadAll(io.LimitReader(zr, 64<<20))
	if err != nil {
		return nil, fmt.Errorf("restore journal %s is damaged (%v): inspect it, then %s to start afresh", s, err, moveAway)
	}
	return restore.DecodeJournal(data, s.String(), moveAway)
}

// Save writes the journal over the version this run last read or wrote.
func (s *SecretJournal) Save(ctx context.Context, j *restore.Journal) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.lost != nil {
		return fmt.Errorf("write restore journal %s: %w", s, s.lost)
	}
	data, err := json.Marshal(j)
	if err != nil {
		return fmt.Errorf("encode restore journal: %w", err)
	}
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	_, _ = zw.Write(data)
	if err := zw.Close(); err != nil {
		return fmt.Errorf("encode restore journal: %w", err)
	}
	if gz.Len() > kubeJournalMax {
		return fmt.Errorf("the restore journal (%d bytes compressed) does not fit in a Secret (1 MiB): set journal_location: state_dir to keep it in a file", gz.Len())
	}
	sec := &corev1.Secret{
		TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Secret"},
		ObjectMeta: metav1.ObjectMeta{Name: KubeJournalSecret, Namespace: s.Namespace, Labels: kubeJournalLabels,
			Annotations: map[string]string{"flightctl.dr/restore-id": j.ID, "flightctl.dr/restore-state": j.State}},
		Type: corev1.SecretTypeOpaque,
		Data: map[string][]byte{kubeJournalKey: gz.Bytes()},
	}
	if !s.known {
		cur, err := s.Client.GetSecret(ctx, s.Namespace, KubeJournalSecret)
		switch {
		case apierrors.IsNotFound(err):
			s.rv = ""
		case err != nil:
			return s.accessHint(err)
		default:
			s.rv = cur.ResourceVersion
		}
		s.known = true
	}
	var out *corev1.Secret
	if s.rv == "" {
		out, err = s.Client.CreateSecret(ctx, sec)
	} else {
		sec.ResourceVersion = s.rv
		out, err = s.Client.ReplaceSecret(ctx, sec)
	}
	if apierrors.IsConflict(err) || apierrors.IsAlreadyExists(err) || (s.rv != "" && apierrors.IsNotFound(err)) {
		return fmt.Errorf("write restore journal %s: it was changed by something else while this restore held the lock: %w; inspect it before running the restore again", s, err)
	}
	if err != nil {
		return s.accessHint(err)
	}
	s.rv = out.ResourceVersion
	return nil
}

// ReadKubeJournal reads the journal a restore keeps in namespace ns of the cluster cl
// reaches (nil when there is none).
func ReadKubeJournal(ctx context.Context, cl *kube.Client, ns string) (*restore.Journal, error) {
	return (&SecretJournal{Client: cl, Namespace: ns}).Load(ctx)
}

// resolveJournal decides where the journal lives, once the client is known.
func (k *KubernetesRestore) resolveJournal() error {
	switch k.Restore.JournalLocation {
	case "", JournalAuto:
		k.journalInCluster = k.Client.InCluster()
	case JournalCluster:
		k.journalInCluster = true
	case JournalStateDir:
		k.journalInCluster = false
	default:
		return fmt.Errorf("journal_location %q is not valid: use auto (in the cluster when the restore runs there), state_dir or cluster", k.Restore.JournalLocation)
	}
	if k.journalInCluster {
		k.journal = &SecretJournal{Client: k.Client, Namespace: k.Config.Namespace, LeaseDuration: k.Restore.JournalLease, Logger: k.Logger}
	}
	return nil
}

// JournalStore is the Secret journal when the journal lives in the cluster; nil: the
// state directory.
func (k *KubernetesRestore) JournalStore() restore.JournalStore {
	if k.journal == nil {
		return nil
	}
	return k.journal
}

// journalPermissions are what the journal in the cluster needs, in the release namespace.
func (k *KubernetesRestore) journalPermissions() []kube.Permission {
	if !k.journalInCluster {
		return nil
	}
	ns := k.Config.Namespace
	var perms []kube.Permission
	for _, v := range []string{"get", "create", "update", "delete"} {
		perms = append(perms, kube.Permission{Verb: v, Group: "coordination.k8s.io", Resource: "leases", Namespace: ns})
	}
	return perms
}
