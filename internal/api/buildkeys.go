package api

import (
	"context"
	"fmt"
	"slices"

	"github.com/cocoon-run/cocoon/internal/template/cache"
	"github.com/cocoon-run/cocoon/internal/template/steps"
)

// Build cache keys name what the cache entry holds, never only what a
// client claims it holds (issue 18: a team that built the same steps with
// the same filesHash but other content got another team's layer, and the
// other team's next build got the attacker's).
//
// The SDK's filesHash cannot be checked on arrival: it covers the COPY
// step's source and destination (unknown when the archive is uploaded)
// and the client's stat of each file, directory sizes included (not in the
// archive). So the server keys a COPY step by the sha256 of the archive it
// stored, and every key by the team: no cache entry is shared across teams.

// teamSalt is the part of every build cache key that names the team.
func teamSalt(team string) string { return cache.Key("team", team) + ":" }

// keySpec returns spec with each COPY step's filesHash replaced by the
// sha256 of the archive this template stored for it. A COPY whose files
// were not uploaded is an error.
func (s *Server) keySpec(ctx context.Context, templateID string, spec steps.Spec) (steps.Spec, error) {
	spec.Steps = slices.Clone(spec.Steps)
	for i, st := range spec.Steps {
		if st.Type != steps.Copy {
			continue
		}
		f, err := s.store.GetTemplateFile(ctx, templateID, st.FilesHash)
		if err != nil || !f.Uploaded {
			err = fmt.Errorf("the files of a COPY step were not uploaded (hash %s)", st.FilesHash)
			return spec, &steps.StepError{Step: i + 1, What: st.Type, Err: err}
		}
		sum, err := cache.HashFile(f.Path)
		if err != nil {
			return spec, &steps.StepError{Step: i + 1, What: st.Type, Err: err}
		}
		spec.Steps[i].FilesHash = "content:" + sum
	}
	return spec, nil
}
