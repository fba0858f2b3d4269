"""Teachers and the teacher job: models and checkpoints, loading teachers, one shard through
the teachers, and the Ray job over all shards (the only place Ray is imported)."""

from kdcache._lazy import lazy_face

__getattr__, __dir__, __all__ = lazy_face(
    __name__,
    {
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
        "read_shard_images": ".shard_targets",
        "run_teach": ".job",
        "save_checkpoint": ".models",
        "start_ray": ".job",
        "stop_ray": ".job",
        "teacher_inputs": ".shard_targets",
        "teacher_targets": ".shard_targets",
    },
)
