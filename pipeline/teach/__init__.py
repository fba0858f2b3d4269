"""Teachers and the teacher job: models and checkpoints, loading teachers, one shard through
the teachers, their feature and attention targets, and the Ray job over all shards (the only
place Ray is imported)."""

from kdcache._lazy import lazy_face

__getattr__, __dir__, __all__ = lazy_face(
    __name__,
    {
        "ATTENTION_HELP": ".feature_request",
        "FEATURES_HELP": ".feature_request",
        "FEATURE_DIM_HELP": ".feature_request",
        "HOST_ALLOCATORS": ".host_memory",
        "FeatureRequest": ".feature_request",
        "FeatureTaps": ".feature_taps",
        "ModelSpec": ".models",
        "TeachConfig": ".teach_config",
        "TeachFailed": ".job",
        "Teacher": ".teachers",
        "TeacherSource": ".teach_config",
        "batch_buffers": ".shard_targets",
        "create_model": ".models",
        "file_sha256": ".models",
        "load_options": ".teachers",
        "load_teacher": ".teachers",
        "read_checkpoint_meta": ".models",
        "requests": ".feature_request",
        "resolve_targets": ".feature_taps",
        "read_shard_images": ".shard_targets",
        "run_teach": ".job",
        "save_checkpoint": ".models",
        "start_ray": ".ray_connect",
        "stop_ray": ".ray_connect",
        "teacher_identity": ".feature_taps",
        "teacher_inputs": ".shard_targets",
        "teacher_targets": ".shard_targets",
        "use_host_allocator": ".host_memory",
        "adapt_stem": ".weights",
        "key_map": ".key_maps",
        "load_strict": ".weights",
        "local_copy": ".models",
        "read_state_dict": ".weights",
    },
)
