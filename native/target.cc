#include "target.h"

static std::vector<const struct target_ops *> &registry()
{
	static std::vector<const struct target_ops *> targets;
	return targets;
}

void target_register(const struct target_ops *ops)
{
	registry().push_back(ops);
}

const std::vector<const struct target_ops *> &target_all()
{
	return registry();
}

const struct target_ops *target_find(const std::string &name)
{
	for (const struct target_ops *ops : registry())
		if (name == ops->name)
			return ops;
	return nullptr;
}
